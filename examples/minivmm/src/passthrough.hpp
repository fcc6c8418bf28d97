// One VFIO passthrough device as a VMM drives it (the flow of
// kernel/sim/testing/sim_host.cpp): container + group + device fd, DMA map of
// guest RAM (IOVA = GPA), MSI-X vector 0 on an eventfd that is ALSO the KVM
// irqfd of the guest MSI, posted into a vCPU descriptor (the sim's stand-in for
// KVM's irq bypass), BAR0 access for the guest's MMIO, and keepalive.
#pragma once

#include <cstdint>
#include <optional>

#include "guest/shared.h"
#include "nic_regs.h"
#include "keepalive/abi/ops.hpp"
#include "keepalive/types.hpp"

namespace keepalive::minivmm {

// A device vector as the guest sees it: MSI-X index -> KVM GSI -> MSI (vector, APIC).
struct vector_route {
  std::uint32_t msix_index = 0;
  vector guest_vector{MINIVMM_NIC_VECTOR};
  apic_id guest_apic{0};
  std::uint32_t gsi = 24;  // above the IOAPIC pins
};

class passthrough {
 public:
  passthrough(abi::syscalls& sys, bdf device) : sys_{sys}, dev_{device} {}
  ~passthrough();
  passthrough(const passthrough&) = delete;
  passthrough& operator=(const passthrough&) = delete;

  // Container, group, device fd (reclaim name when a token is given), and the
  // DMA map [iova, iova + bytes) -> dma_vaddr. On a reclaim the map adopts the
  // preserved domain without touching its tables.
  [[nodiscard]] status open(const std::optional<token>& t, std::uint64_t dma_vaddr, std::uint64_t iova,
                            std::uint64_t bytes);
  // One more DMA range in the same container (IOVA = GPA).
  [[nodiscard]] status map_dma(std::uint64_t dma_vaddr, std::uint64_t iova, std::uint64_t bytes);
  // fd hand-over (QEMU CPR): the mapping [iova, iova + bytes) keeps its IOMMU
  // entries and gets a new process address (UNMAP_DMA then MAP_DMA, FLAG_VADDR).
  [[nodiscard]] status repoint_dma(std::uint64_t dma_vaddr, std::uint64_t iova, std::uint64_t bytes);
  // fd hand-over: the old VM's descriptor goes, the vector posts into one of
  // the new VM's (connect_vector again, with the carried eventfd).
  [[nodiscard]] status rewire_vector(const vector_route& r, int eventfd, apic_id host_cpu);
  // Memory Space + Bus Master (cold start only: a reclaimed device keeps them).
  [[nodiscard]] status enable();
  // VFIO_DEVICE_SET_IRQS(MSI-X, index) -> eventfd, then posting of that vector
  // into a fresh vCPU descriptor (KA_SIM_CREATE_PID + KA_SIM_IRQ_BYPASS) with
  // the same eventfd as the delivery irqfd. Without posted interrupts the
  // vector stays remapped and the eventfd is signalled by the host: the same
  // KVM irqfd delivers it either way.
  [[nodiscard]] status connect_vector(const vector_route& r, int eventfd, apic_id host_cpu);
  [[nodiscard]] bool posted() const noexcept { return posted_; }

  [[nodiscard]] result<abi::enter_reply> keepalive_enter(const token& t);
  [[nodiscard]] status keepalive_leave(const token& t);

  [[nodiscard]] result<std::uint16_t> pci_command();
  [[nodiscard]] status bar0_write(std::uint64_t offset, unsigned size, std::uint64_t value);
  [[nodiscard]] result<std::uint64_t> bar0_read(std::uint64_t offset, unsigned size);

  [[nodiscard]] bdf address() const noexcept { return dev_; }
  [[nodiscard]] int device_fd() const noexcept { return device_; }

 private:
  abi::syscalls& sys_;
  bdf dev_;
  int container_ = -1, group_ = -1, device_ = -1, kvm_ = -1;
  bool posted_ = false;
};

}  // namespace keepalive::minivmm
