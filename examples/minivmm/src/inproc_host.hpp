// A whole simulated host in this process (platform + sim kernel): every
// host_link it hands out is a separate sim process, so two VMM objects in one
// process restart into each other exactly as two VMM processes would.
#pragma once

#include <memory>
#include <string>

#include "host_link.hpp"
#include "kernel.hpp"
#include "platform.hpp"

namespace keepalive::minivmm {

struct inproc_config {
  std::uint64_t guest_area_bytes = 32ull << 20;
  std::uint64_t kernel_bytes = 64ull << 20;
  bool posted_interrupts = true;
  bool baseline = false;  // an unpatched kernel: no keepalive (restarts are refused)
};

class inproc_host {
 public:
  static result<std::unique_ptr<inproc_host>> create(const inproc_config& cfg = {});
  ~inproc_host();
  inproc_host(const inproc_host&) = delete;
  inproc_host& operator=(const inproc_host&) = delete;

  [[nodiscard]] std::unique_ptr<host_link> connect(std::string process_name);
  [[nodiscard]] sim::platform& platform() noexcept { return *plat_; }
  [[nodiscard]] sim::kernel& kernel() noexcept { return *kernel_; }
  // The first NIC (0000:00:04.0).
  [[nodiscard]] static bdf nic0() noexcept { return bdf{0, 0, 4, 0}; }

 private:
  inproc_host() = default;
  std::unique_ptr<sim::platform> plat_;
  sim::kernel_config kcfg_;
  std::unique_ptr<sim::kernel> kernel_;
};

}  // namespace keepalive::minivmm
