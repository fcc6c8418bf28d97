// The QEMU edu device (hw/misc/edu.c, QEMU 7.2) through VFIO's group/container
// path, for the guest test programs. Raw VFIO ioctls here; the keepalive calls
// go through keepalive::abi (the project's typed ops over linux_syscalls()).
#pragma once

#include <linux/vfio.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace ka_guest {

namespace edu {
inline constexpr std::uint16_t vendor_id = 0x1234;
inline constexpr std::uint16_t device_id = 0x11e8;
// BAR0 registers (4-byte accesses below 0x80, 4 or 8 from 0x80 on).
inline constexpr std::uint64_t reg_ident = 0x00;
inline constexpr std::uint64_t reg_liveness = 0x04;  // reads back ~written
inline constexpr std::uint64_t reg_irq_status = 0x24;
inline constexpr std::uint64_t reg_irq_ack = 0x64;
inline constexpr std::uint64_t reg_dma_src = 0x80;
inline constexpr std::uint64_t reg_dma_dst = 0x88;
inline constexpr std::uint64_t reg_dma_count = 0x90;
inline constexpr std::uint64_t reg_dma_cmd = 0x98;
inline constexpr std::uint32_t dma_cmd_run = 1u << 0;
inline constexpr std::uint32_t dma_cmd_to_ram = 1u << 1;  // 0: RAM -> edu, 1: edu -> RAM
inline constexpr std::uint32_t dma_cmd_irq = 1u << 2;     // raise irq_dma on completion
inline constexpr std::uint32_t irq_dma = 0x100;
inline constexpr std::uint64_t dma_buffer = 0x40000;  // device-side buffer, 4 KiB
inline constexpr std::uint32_t dma_max = 2048;        // QEMU 7.2 aborts on 4096
inline constexpr std::uint64_t dma_mask = (1ull << 28) - 1;  // edu clamps DMA addresses
}  // namespace edu

// PCI config space (conventional header).
inline constexpr std::uint16_t pci_command = 0x04;
inline constexpr std::uint16_t pci_command_memory = 1u << 1;
inline constexpr std::uint16_t pci_command_master = 1u << 2;
inline constexpr std::uint8_t pci_cap_ptr = 0x34;
inline constexpr std::uint8_t pci_cap_id_msi = 0x05;

// edu's PCI address and IOMMU group, from sysfs.
struct edu_location {
  std::string bdf;  // "0000:00:03.0"
  int group{-1};
};
std::optional<edu_location> find_edu();

// The physical config space through sysfs (what the device holds, not VFIO's
// virtualised view).
std::optional<std::uint32_t> sysfs_config_read(const std::string& bdf, unsigned offset, unsigned size);
// Offset of a capability in a config space image, 0 if absent.
unsigned find_capability(const std::uint8_t* config, std::size_t size, std::uint8_t id);

// One VFIO user of edu: container + group + device fds.
class vfio_edu {
 public:
  vfio_edu() = default;
  vfio_edu(const vfio_edu&) = delete;
  vfio_edu& operator=(const vfio_edu&) = delete;
  ~vfio_edu();

  // open container and group, SET_CONTAINER, SET_IOMMU(type1v2). -errno.
  int open_group(const edu_location& loc);
  // VFIO_GROUP_GET_DEVICE_FD with `name` (the bdf, optionally " vf_token=...").
  int get_device(const std::string& name);
  // The cdev/iommufd path instead: opens /dev/vfio/devices/vfioN (not bound:
  // only BIND and the keepalive GET_IOMMUFD are accepted), then
  // VFIO_DEVICE_BIND_IOMMUFD to `iommufd` (with a 16-byte token if given;
  // devid out) and VFIO_DEVICE_ATTACH_IOMMUFD_PT (pt_id in: IOAS or HWPT; out:
  // HWPT). -errno.
  int open_cdev(const edu_location& loc);
  int bind_iommufd(int iommufd, const std::uint8_t* token, std::uint32_t& devid);
  int attach_pt(std::uint32_t& pt_id);
  int container() const { return container_; }
  int group() const { return group_; }
  int device() const { return device_; }

  int map_dma(std::uint64_t iova, void* vaddr, std::uint64_t size, std::uint32_t extra_flags = 0);
  int unmap_dma(std::uint64_t iova, std::uint64_t size, std::uint32_t flags);

  std::optional<std::uint32_t> bar0_read32(std::uint64_t reg) const;
  bool bar0_write32(std::uint64_t reg, std::uint32_t v) const;
  std::optional<std::uint32_t> config_read(unsigned offset, unsigned size) const;
  bool config_write16(unsigned offset, std::uint16_t v) const;

  // VFIO_DEVICE_SET_IRQS on the MSI index, vector 0 -> eventfd `efd`. -errno.
  int set_msi_trigger(int efd) const;
  // VFIO_DEVICE_SET_IRQS DATA_NONE|ACTION_TRIGGER on the MSI index: count 0
  // disables MSI, count > 0 is a loopback trigger of those vectors. -errno.
  int set_msi_none(std::uint32_t start, std::uint32_t count) const;

  // Starts a DMA of `bytes` between iova and edu's buffer.
  bool start_dma(std::uint64_t iova, std::uint32_t bytes, bool to_ram, bool irq) const;
  // Polls the DMA command register until the run bit clears.
  bool wait_dma(int timeout_ms) const;

 private:
  int load_regions();
  int container_{-1};
  int group_{-1};
  int device_{-1};
  std::uint64_t bar0_offset_{0};
  std::uint64_t config_offset_{0};
};

// A fresh iommufd context (/dev/iommu) with one IOAS mapping `bytes` of
// `memfd` at `iova` (IOMMU_IOAS_MAP_FILE: IOMMU_IOAS_CHANGE_PROCESS can move
// it to another process). -errno; iommufd is set once opened.
int iommufd_context(int memfd, std::uint64_t iova, std::size_t bytes, int& iommufd, std::uint32_t& ioas_id);

// Reads an eventfd with a timeout: the counter, or nullopt if nothing came.
std::optional<std::uint64_t> wait_eventfd(int efd, int timeout_ms);

// Physical address of the page backing `vaddr` (/proc/self/pagemap, root).
std::optional<std::uint64_t> virt_to_phys(const void* vaddr);

}  // namespace ka_guest
