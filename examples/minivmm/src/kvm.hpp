// Thin KVM layer for the mini-VMM: a VM with the in-kernel irqchip, memory
// slots, MSI routes and irqfds, and vCPUs whose whole architectural state can
// be saved in one VM and restored into another (a VMM restart keeps guest RAM
// and moves only this state).
#pragma once

#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "keepalive/error.hpp"
#include "unique_fd.hpp"

namespace keepalive::minivmm {

// Everything KVM_GET_* returns for one vCPU that a new VM needs to continue it.
struct vcpu_state {
  kvm_regs regs{};
  kvm_sregs sregs{};
  std::array<std::uint32_t, 1024> xsave{};  // struct kvm_xsave region (legacy + extended state)
  kvm_xcrs xcrs{};
  kvm_lapic_state lapic{};
  kvm_vcpu_events events{};
  kvm_mp_state mp_state{};
  kvm_debugregs debugregs{};
  struct msr {
    std::uint32_t index;
    std::uint64_t value;
  };
  std::vector<msr> msrs;            // without IA32_TSC: the TSC moves with tsc_offset
  std::uint64_t tsc_offset = 0;     // guest TSC = host TSC + tsc_offset (KVM_VCPU_TSC_OFFSET)
};

// PIC master, PIC slave, IOAPIC (KVM_GET_IRQCHIP).
struct irqchip_state {
  std::array<kvm_irqchip, 3> chips{};
};

class kvm_vcpu {
 public:
  kvm_vcpu(unique_fd fd, kvm_run* run, std::size_t map_bytes, unsigned id) noexcept
      : fd_{std::move(fd)}, run_{run}, map_bytes_{map_bytes}, id_{id} {}
  ~kvm_vcpu();
  kvm_vcpu(const kvm_vcpu&) = delete;
  kvm_vcpu& operator=(const kvm_vcpu&) = delete;

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] kvm_run* run_area() const noexcept { return run_; }
  [[nodiscard]] unsigned id() const noexcept { return id_; }
  // KVM_RUN: 0, or -errno (-EINTR when kicked or immediate_exit is set).
  [[nodiscard]] int run() noexcept;

  [[nodiscard]] result<vcpu_state> save(const std::vector<std::uint32_t>& msr_indices) const;
  [[nodiscard]] status restore(const vcpu_state& s) const;
  [[nodiscard]] result<kvm_sregs> get_sregs() const;
  [[nodiscard]] status set_sregs(const kvm_sregs& s) const;
  [[nodiscard]] status set_regs(const kvm_regs& r) const;
  [[nodiscard]] result<std::uint32_t> tsc_khz() const;

 private:
  unique_fd fd_;
  kvm_run* run_;
  std::size_t map_bytes_;
  unsigned id_;
};

class kvm_vm {
 public:
  // Opens /dev/kvm (errc::not_found / access_denied when it cannot be opened),
  // creates the VM, its TSS area and the in-kernel irqchip.
  static result<std::unique_ptr<kvm_vm>> create();
  kvm_vm(const kvm_vm&) = delete;
  kvm_vm& operator=(const kvm_vm&) = delete;
  ~kvm_vm() = default;

  [[nodiscard]] int fd() const noexcept { return vm_.get(); }
  [[nodiscard]] status map_memory(std::uint32_t slot, std::uint64_t gpa, void* host, std::uint64_t bytes) const;
  // A vCPU with the host's supported CPUID.
  [[nodiscard]] result<std::unique_ptr<kvm_vcpu>> create_vcpu(unsigned id) const;
  // GSI -> MSI route (the whole table is rewritten with every known route).
  [[nodiscard]] status set_msi_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data);
  [[nodiscard]] status irqfd(int eventfd, std::uint32_t gsi, bool assign) const;
  [[nodiscard]] status signal_msi(std::uint64_t address, std::uint32_t data) const;
  [[nodiscard]] result<irqchip_state> save_irqchip() const;
  [[nodiscard]] status restore_irqchip(const irqchip_state& s) const;
  // The MSRs of vcpu_state::msrs that this KVM knows.
  [[nodiscard]] const std::vector<std::uint32_t>& state_msrs() const noexcept { return msrs_; }

 private:
  kvm_vm() = default;
  unique_fd kvm_, vm_;
  std::size_t run_bytes_ = 0;
  std::vector<kvm_cpuid_entry2> cpuid_;
  std::vector<std::uint32_t> msrs_;
  std::vector<kvm_irq_routing_entry> routes_;
};

// MSI address/data for a fixed, edge, physical-destination interrupt.
[[nodiscard]] constexpr std::uint64_t msi_address(std::uint32_t dest_apic) noexcept {
  return 0xfee00000ull | (std::uint64_t{dest_apic & 0xff} << 12);
}
[[nodiscard]] constexpr std::uint32_t msi_data(std::uint32_t vector) noexcept { return vector & 0xff; }

}  // namespace keepalive::minivmm
