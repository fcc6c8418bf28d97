// sim_wiring.hpp — the interrupt_wiring of a VMM on the simulated host: what
// KVM does on Linux, through the sim's /dev/kvm stand-in
// (kernel/sim/kernel/sim_uapi.h). One VM fd per wiring; one posted-interrupt
// descriptor per vCPU (KA_SIM_CREATE_PID, NDST = the host CPU the vCPU runs
// on); each vector connected with KA_SIM_IRQ_BYPASS. On a platform without
// posted interrupts the bypass is refused (EOPNOTSUPP) and the vector stays
// remapped: the eventfd delivers it, as on Linux without irq bypass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>

#include <keepalive/abi/syscalls.hpp>
#include <keepalive/session.hpp>
#include <keepalive/types.hpp>

namespace keepalive {

class sim_wiring final : public interrupt_wiring {
 public:
  // `sys` is the VMM's process: the same one its session uses.
  explicit sim_wiring(abi::syscalls& sys) : sys_{sys} {}
  ~sim_wiring() override;
  sim_wiring(const sim_wiring&) = delete;
  sim_wiring& operator=(const sim_wiring&) = delete;

  // The eventfd standing for device `device_index`'s vector `msix` (the guest
  // MSI's irqfd). Not owned.
  void set_eventfd(std::size_t device_index, msix_index msix, int fd);
  // The host CPU vCPU `vcpu` runs on; default vcpu + 1.
  void set_host_cpu(std::uint32_t vcpu, apic_id cpu);

  [[nodiscard]] result<int> eventfd(const vector_binding& b) override;
  [[nodiscard]] status connect(const vector_binding& b, int eventfd) override;
  // The kernel now holds the descriptors those vectors posted into: later
  // connects use a new VM and fresh descriptors.
  void rolled_back(std::span<const vector_binding> connected) noexcept override;

  [[nodiscard]] std::size_t connected() const noexcept { return posted_ + remapped_; }
  [[nodiscard]] std::size_t posted() const noexcept { return posted_; }      // delivered by posting
  [[nodiscard]] std::size_t remapped() const noexcept { return remapped_; }  // platform refused: eventfd delivers
  [[nodiscard]] std::size_t descriptors() const noexcept { return pids_.size(); }

 private:
  void drop_vm() noexcept;
  abi::syscalls& sys_;
  int vm_ = -1;
  std::map<std::pair<std::size_t, std::uint16_t>, int> eventfds_;
  std::map<std::uint32_t, apic_id> host_cpu_;
  std::map<std::uint32_t, std::uint32_t> pids_;  // vcpu -> descriptor id
  std::size_t posted_ = 0, remapped_ = 0;
};

}  // namespace keepalive
