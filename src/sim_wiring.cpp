#include "keepalive/sim_wiring.hpp"

#include <fcntl.h>

#include <cerrno>

#include <fmt/format.h>

// The sim's KVM stand-in ABI (a C header like the uapi; not installed).
#include "../kernel/sim/kernel/sim_uapi.h"

namespace keepalive {

sim_wiring::~sim_wiring() { drop_vm(); }

void sim_wiring::drop_vm() noexcept {
  if (vm_ >= 0) (void)sys_.close(vm_);
  vm_ = -1;
  pids_.clear();
}

void sim_wiring::set_eventfd(std::size_t device_index, msix_index msix, int fd) {
  eventfds_[{device_index, msix.value()}] = fd;
}

void sim_wiring::set_host_cpu(std::uint32_t vcpu, apic_id cpu) { host_cpu_[vcpu] = cpu; }

result<int> sim_wiring::eventfd(const vector_binding& b) {
  auto it = eventfds_.find({b.device_index, b.route.msix.value()});
  if (it == eventfds_.end())
    return {errc::not_found, fmt::format("no eventfd set for device {} MSI-X {}", b.device_index, b.route.msix.value())};
  return it->second;
}

status sim_wiring::connect(const vector_binding& b, int eventfd) {
  if (vm_ < 0) {
    auto vm = sys_.open("/dev/kvm", O_RDWR);
    if (!vm) return vm.err();
    vm_ = *vm;
  }
  auto pit = pids_.find(b.route.vcpu);
  if (pit == pids_.end()) {
    ka_sim_pid pid{};
    pid.size = sizeof pid;
    auto cpu = host_cpu_.find(b.route.vcpu);
    pid.host_apic_id = cpu != host_cpu_.end() ? cpu->second.value() : b.route.vcpu + 1;
    if (const long rc = sys_.ioctl(vm_, KA_SIM_CREATE_PID, &pid); rc < 0)
      return {errc_from_errno(static_cast<int>(-rc)), fmt::format("KA_SIM_CREATE_PID for vCPU {}", b.route.vcpu)};
    pit = pids_.emplace(b.route.vcpu, pid.out_pid_id).first;
  }
  ka_sim_irq_bypass req{};
  req.size = sizeof req;
  req.device_fd = b.device_fd;
  req.msix_index = b.route.msix.value();
  req.pid_id = pit->second;
  req.guest_vector = b.route.guest_vector.value();
  req.irqfd = eventfd;
  const long rc = sys_.ioctl(vm_, KA_SIM_IRQ_BYPASS, &req);
  if (rc == -EOPNOTSUPP) {
    ++remapped_;
    return {};
  }
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), "KA_SIM_IRQ_BYPASS"};
  ++posted_;
  return {};
}

void sim_wiring::rolled_back(std::span<const vector_binding> connected) noexcept {
  (void)connected;
  drop_vm();
  posted_ = remapped_ = 0;
}

}  // namespace keepalive
