// The simulated machine: physical memory, one VT-d unit, PCI functions. It
// never restarts: VMMs come and go, the sim kernel is torn down and rebuilt at
// stage 2, the platform keeps running (device threads keep streaming).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "iommu.hpp"
#include "nic.hpp"
#include "phys_memory.hpp"

namespace keepalive::sim {

struct platform_config {
  std::uint64_t phys_bytes = 256ull << 20;  // multiple of 2 MiB
  unsigned nics = 1;                        // 0000:00:04.0 .. 0000:00:1f.0, then bus 1, ... (<= 64)
  unsigned msix_vectors = KA_NIC_MSIX_VECTORS;  // per NIC, <= KA_NIC_MSIX_MAX_VECTORS
  bool posted_interrupts = true;            // VT-d posted-interrupt capability
  // What an FLR makes its caller wait (PCIe: 100 ms). Only the fuzzer shortens
  // it: nothing observable happens during the wait.
  std::chrono::milliseconds flr_wait{hw::pci::flr_wait_ms};
};

class platform {
 public:
  static result<std::unique_ptr<platform>> create(const platform_config& cfg);
  platform(const platform&) = delete;
  platform& operator=(const platform&) = delete;
  ~platform();

  [[nodiscard]] phys_memory& memory() noexcept { return mem_; }
  [[nodiscard]] iommu& vtd() noexcept { return *iommu_; }
  [[nodiscard]] bool posted_interrupts() const noexcept { return posted_; }
  [[nodiscard]] pci_function* find(bdf address) noexcept;
  [[nodiscard]] nic* find_nic(bdf address) noexcept;
  [[nodiscard]] const std::vector<std::unique_ptr<pci_function>>& functions() const noexcept { return functions_; }

 private:
  explicit platform(phys_memory mem, bool posted);
  phys_memory mem_;
  std::unique_ptr<iommu> iommu_;
  bool posted_;
  std::vector<std::unique_ptr<pci_function>> functions_;
};

}  // namespace keepalive::sim
