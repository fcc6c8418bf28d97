#include "platform.hpp"

#include <algorithm>
#include <utility>

namespace keepalive::sim {

namespace {
constexpr std::uint8_t first_nic_device = 4;
constexpr unsigned nics_per_bus = 32 - first_nic_device;  // devices 4..31 of each bus
constexpr unsigned max_nics = 64;
}  // namespace

platform::platform(phys_memory mem, bool posted)
    : mem_{std::move(mem)}, iommu_{std::make_unique<iommu>(mem_)}, posted_{posted} {
  iommu_->set_posted_interrupts(posted);
}

platform::~platform() {
  functions_.clear();  // device threads stop before the IOMMU and memory they use go away
  iommu_.reset();
}

result<std::unique_ptr<platform>> platform::create(const platform_config& cfg) {
  if (cfg.nics > max_nics) return {errc::invalid, "at most 64 NICs"};
  if (cfg.msix_vectors == 0 || cfg.msix_vectors > KA_NIC_MSIX_MAX_VECTORS)
    return {errc::invalid, "MSI-X vectors per NIC: 1..2048"};
  auto mem = phys_memory::create(cfg.phys_bytes);
  if (!mem) return mem.err();
  std::unique_ptr<platform> p{new platform{std::move(*mem), cfg.posted_interrupts}};
  for (unsigned i = 0; i < cfg.nics; ++i) {
    const bdf address{0, static_cast<std::uint8_t>(i / nics_per_bus),
                      static_cast<std::uint8_t>(first_nic_device + i % nics_per_bus), 0};
    p->functions_.push_back(std::make_unique<nic>(address, *p->iommu_, cfg.msix_vectors, cfg.flr_wait));
  }
  return p;
}

pci_function* platform::find(bdf address) noexcept {
  auto it = std::find_if(functions_.begin(), functions_.end(), [&](const auto& f) { return f->address() == address; });
  return it == functions_.end() ? nullptr : it->get();
}

nic* platform::find_nic(bdf address) noexcept { return dynamic_cast<nic*>(find(address)); }

}  // namespace keepalive::sim
