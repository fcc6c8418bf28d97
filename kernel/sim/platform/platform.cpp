#include "platform.hpp"

#include <algorithm>
#include <utility>

namespace keepalive::sim {

namespace {
constexpr std::uint8_t first_nic_device = 4;
constexpr unsigned max_nics = 32 - first_nic_device;  // devices 4..31 on bus 0
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
  if (cfg.nics > max_nics) return {errc::invalid, "at most 28 NICs fit on bus 0 (devices 4..31)"};
  auto mem = phys_memory::create(cfg.phys_bytes);
  if (!mem) return mem.err();
  std::unique_ptr<platform> p{new platform{std::move(*mem), cfg.posted_interrupts}};
  for (unsigned i = 0; i < cfg.nics; ++i) {
    const bdf address{0, 0, static_cast<std::uint8_t>(first_nic_device + i), 0};
    p->functions_.push_back(std::make_unique<nic>(address, *p->iommu_));
  }
  return p;
}

pci_function* platform::find(bdf address) noexcept {
  auto it = std::find_if(functions_.begin(), functions_.end(), [&](const auto& f) { return f->address() == address; });
  return it == functions_.end() ? nullptr : it->get();
}

nic* platform::find_nic(bdf address) noexcept { return dynamic_cast<nic*>(find(address)); }

}  // namespace keepalive::sim
