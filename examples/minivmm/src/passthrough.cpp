#include "passthrough.hpp"

#include <linux/vfio.h>
#include <fcntl.h>

#include <cstring>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "sim_uapi.h"

namespace keepalive::minivmm {
namespace {

constexpr std::uint64_t region_offset(unsigned index) { return std::uint64_t{index} << 40; }  // VFIO_PCI_OFFSET_SHIFT

status from_rc(long rc, const char* what) {
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), what};
  return {};
}

}  // namespace

passthrough::~passthrough() {
  // The device first: in keepalive its close preserves the posted descriptor
  // (and its irqfd routing) BEFORE the VM file's close would drop the irqfds of
  // a descriptor the device still posts into (a lost, "spurious" interrupt).
  for (int* fd : {&device_, &group_, &container_, &kvm_})
    if (*fd >= 0) (void)sys_.close(*fd);
}

status passthrough::open(const std::optional<token>& t, std::uint64_t dma_vaddr, std::uint64_t iova, std::uint64_t bytes) {
  auto c = sys_.open("/dev/vfio/vfio", O_RDWR);
  if (!c) return c.err();
  container_ = *c;
  auto g = sys_.open(fmt::format("/dev/vfio/{}", dev_.devfn()), O_RDWR);
  if (!g) return g.err();
  group_ = *g;
  if (auto st = from_rc(sys_.ioctl(group_, VFIO_GROUP_SET_CONTAINER, &container_), "VFIO_GROUP_SET_CONTAINER"); !st)
    return st;
  if (auto st = from_rc(sys_.ioctl(container_, VFIO_SET_IOMMU, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU})),
                        "VFIO_SET_IOMMU");
      !st)
    return st;
  std::string name = t ? abi::reclaim_name(dev_, *t) : dev_.to_string();
  const long fd = sys_.ioctl(group_, VFIO_GROUP_GET_DEVICE_FD, name.data());
  if (fd < 0) return from_rc(fd, t ? "VFIO_GROUP_GET_DEVICE_FD (reclaim)" : "VFIO_GROUP_GET_DEVICE_FD");
  device_ = static_cast<int>(fd);
  return map_dma(dma_vaddr, iova, bytes);
}

status passthrough::map_dma(std::uint64_t dma_vaddr, std::uint64_t iova, std::uint64_t bytes) {
  vfio_iommu_type1_dma_map map{};
  map.argsz = sizeof map;
  map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  map.vaddr = dma_vaddr;
  map.iova = iova;
  map.size = bytes;
  return from_rc(sys_.ioctl(container_, VFIO_IOMMU_MAP_DMA, &map), "VFIO_IOMMU_MAP_DMA");
}

status passthrough::repoint_dma(std::uint64_t dma_vaddr, std::uint64_t iova, std::uint64_t bytes) {
  vfio_iommu_type1_dma_unmap unmap{};
  unmap.argsz = sizeof unmap;
  unmap.flags = VFIO_DMA_UNMAP_FLAG_VADDR;
  unmap.iova = iova;
  unmap.size = bytes;
  if (auto st = from_rc(sys_.ioctl(container_, VFIO_IOMMU_UNMAP_DMA, &unmap), "VFIO_IOMMU_UNMAP_DMA(VADDR)"); !st) return st;
  vfio_iommu_type1_dma_map map{};
  map.argsz = sizeof map;
  map.flags = VFIO_DMA_MAP_FLAG_VADDR;
  map.vaddr = dma_vaddr;
  map.iova = iova;
  map.size = bytes;
  return from_rc(sys_.ioctl(container_, VFIO_IOMMU_MAP_DMA, &map), "VFIO_IOMMU_MAP_DMA(VADDR)");
}

status passthrough::rewire_vector(const vector_route& r, int eventfd, apic_id host_cpu) {
  // The new VM's descriptor first, then the old VM's file goes: a post that
  // still lands in the old descriptor then finds its irqfd.
  const int old_vm = std::exchange(kvm_, -1);
  auto st = connect_vector(r, eventfd, host_cpu);
  if (old_vm >= 0) (void)sys_.close(old_vm);
  return st;
}

status passthrough::enable() {
  std::uint16_t cmd = 0;
  if (auto r = sys_.pread(device_, std::as_writable_bytes(std::span{&cmd, 1}), region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + 4);
      !r)
    return r.err();
  cmd |= 0x6;  // Memory Space + Bus Master
  if (auto r = sys_.pwrite(device_, std::as_bytes(std::span{&cmd, 1}), region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + 4); !r)
    return r.err();
  return {};
}

result<std::uint16_t> passthrough::pci_command() {
  std::uint16_t cmd = 0;
  if (auto r = sys_.pread(device_, std::as_writable_bytes(std::span{&cmd, 1}), region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + 4);
      !r)
    return r.err();
  return cmd;
}

status passthrough::connect_vector(const vector_route& r, int eventfd, apic_id host_cpu) {
  alignas(8) std::byte buf[sizeof(vfio_irq_set) + sizeof(std::int32_t)]{};
  auto* set = reinterpret_cast<vfio_irq_set*>(buf);
  set->argsz = sizeof buf;
  set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set->index = VFIO_PCI_MSIX_IRQ_INDEX;
  set->start = r.msix_index;
  set->count = 1;
  const std::int32_t efd = eventfd;
  std::memcpy(buf + sizeof(vfio_irq_set), &efd, sizeof efd);
  if (auto st = from_rc(sys_.ioctl(device_, VFIO_DEVICE_SET_IRQS, set), "VFIO_DEVICE_SET_IRQS"); !st) return st;

  if (kvm_ < 0) {
    auto vm = sys_.open("/dev/kvm", O_RDWR);
    if (!vm) return vm.err();
    kvm_ = *vm;
  }
  ka_sim_pid pid{};
  pid.size = sizeof pid;
  pid.host_apic_id = host_cpu.value();
  if (auto st = from_rc(sys_.ioctl(kvm_, KA_SIM_CREATE_PID, &pid), "KA_SIM_CREATE_PID"); !st) return st;
  ka_sim_irq_bypass b{};
  b.size = sizeof b;
  b.device_fd = device_;
  b.msix_index = r.msix_index;
  b.pid_id = pid.out_pid_id;
  b.guest_vector = r.guest_vector.value();
  b.irqfd = eventfd;
  const long rc = sys_.ioctl(kvm_, KA_SIM_IRQ_BYPASS, &b);
  if (rc == -EOPNOTSUPP) {
    posted_ = false;  // remapped: the host signals the same eventfd
    return {};
  }
  if (auto st = from_rc(rc, "KA_SIM_IRQ_BYPASS"); !st) return st;
  posted_ = true;
  return {};
}

result<abi::enter_reply> passthrough::keepalive_enter(const token& t) { return abi::keepalive_enter(sys_, device_, t); }
status passthrough::keepalive_leave(const token& t) { return abi::keepalive_leave(sys_, device_, t); }

status passthrough::bar0_write(std::uint64_t offset, unsigned size, std::uint64_t value) {
  auto r = sys_.pwrite(device_, std::as_bytes(std::span{&value, 1}).first(size), region_offset(VFIO_PCI_BAR0_REGION_INDEX) + offset);
  if (!r) return r.err();
  return {};
}

result<std::uint64_t> passthrough::bar0_read(std::uint64_t offset, unsigned size) {
  std::uint64_t v = 0;
  auto r = sys_.pread(device_, std::as_writable_bytes(std::span{&v, 1}).first(size), region_offset(VFIO_PCI_BAR0_REGION_INDEX) + offset);
  if (!r) return r.err();
  return v;
}

}  // namespace keepalive::minivmm
