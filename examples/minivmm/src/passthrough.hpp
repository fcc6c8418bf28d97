// The passthrough NIC as the VMM touches it itself. The VFIO flow (container,
// group, device fd, DMA map, MSI-X eventfds, keepalive enter/leave, reclaim)
// is keepalive::session's; the KVM side of the sim host is keepalive::sim_wiring
// (KA_SIM_CREATE_PID + KA_SIM_IRQ_BYPASS; the vector's eventfd is also the
// real KVM irqfd of the guest MSI). What is left here goes through the fds the
// session holds: config space, BAR0 for the guest's MMIO, and the two steps of
// an fd hand-over restart (QEMU CPR) that keepalive makes unnecessary.
#pragma once

#include <cstdint>

#include "guest/shared.h"
#include "nic_regs.h"
#include "keepalive/abi/syscalls.hpp"
#include "keepalive/session.hpp"
#include "keepalive/types.hpp"

namespace keepalive::minivmm {

// A device vector as the guest sees it: MSI-X index -> KVM GSI -> MSI (vector, APIC).
struct vector_route {
  std::uint32_t msix_index = 0;
  vector guest_vector{MINIVMM_NIC_VECTOR};
  apic_id guest_apic{0};
  std::uint32_t gsi = 24;  // above the IOAPIC pins
};

// The session's description of the NIC: IOMMU group = devfn (the sim's
// /dev/vfio/<bus<<8|devfn>), the one vector to vCPU 0.
[[nodiscard]] device_spec nic_spec(bdf nic, const vector_route& r);

class passthrough {
 public:
  passthrough(abi::syscalls& sys, int device_fd, int container_fd) : sys_{sys}, device_{device_fd}, container_{container_fd} {}

  // Memory Space + Bus Master (cold start only: a reclaimed device keeps them).
  [[nodiscard]] status enable();
  [[nodiscard]] result<std::uint16_t> pci_command();
  [[nodiscard]] status bar0_write(std::uint64_t offset, unsigned size, std::uint64_t value);
  [[nodiscard]] result<std::uint64_t> bar0_read(std::uint64_t offset, unsigned size);
  // fd hand-over: the mapping [iova, iova + bytes) keeps its IOMMU entries and
  // gets a new process address (UNMAP_DMA then MAP_DMA, FLAG_VADDR).
  [[nodiscard]] status repoint_dma(std::uint64_t dma_vaddr, std::uint64_t iova, std::uint64_t bytes);
  // fd hand-over: VFIO_DEVICE_SET_IRQS(MSI-X, index) -> eventfd again, before
  // the new VM's wiring connects the vector.
  [[nodiscard]] status set_trigger(std::uint32_t msix_index, int eventfd);

 private:
  abi::syscalls& sys_;
  int device_, container_;
};

}  // namespace keepalive::minivmm
