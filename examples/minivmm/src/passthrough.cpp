#include "passthrough.hpp"

#include <linux/vfio.h>

#include <cstring>
#include <span>

namespace keepalive::minivmm {
namespace {

constexpr std::uint64_t region_offset(unsigned index) { return std::uint64_t{index} << 40; }  // VFIO_PCI_OFFSET_SHIFT

status from_rc(long rc, const char* what) {
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), what};
  return {};
}

}  // namespace

device_spec nic_spec(bdf nic, const vector_route& r) {
  return {nic, nic.devfn(), {{msix_index{static_cast<std::uint16_t>(r.msix_index)}, r.guest_vector, 0}}};
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

status passthrough::set_trigger(std::uint32_t msix_index, int eventfd) {
  alignas(8) std::byte buf[sizeof(vfio_irq_set) + sizeof(std::int32_t)]{};
  auto* set = reinterpret_cast<vfio_irq_set*>(buf);
  set->argsz = sizeof buf;
  set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set->index = VFIO_PCI_MSIX_IRQ_INDEX;
  set->start = msix_index;
  set->count = 1;
  const std::int32_t efd = eventfd;
  std::memcpy(buf + sizeof(vfio_irq_set), &efd, sizeof efd);
  return from_rc(sys_.ioctl(device_, VFIO_DEVICE_SET_IRQS, set), "VFIO_DEVICE_SET_IRQS");
}

status passthrough::enable() {
  auto cmd = pci_command();
  if (!cmd) return cmd.err();
  const std::uint16_t on = *cmd | 0x6;  // Memory Space + Bus Master
  if (auto r = sys_.pwrite(device_, std::as_bytes(std::span{&on, 1}), region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + 4); !r)
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
