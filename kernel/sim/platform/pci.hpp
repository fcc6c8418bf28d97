// A PCI function as the platform sees it: config space, BAR MMIO, FLR.
#pragma once

#include <cstdint>

#include "keepalive/types.hpp"

namespace keepalive::sim {

class pci_function {
 public:
  explicit pci_function(bdf address) : address_{address} {}
  virtual ~pci_function() = default;
  pci_function(const pci_function&) = delete;
  pci_function& operator=(const pci_function&) = delete;

  [[nodiscard]] bdf address() const noexcept { return address_; }
  [[nodiscard]] std::uint16_t source_id() const noexcept { return address_.source_id(); }

  // size is 1, 2 or 4 bytes; offsets inside 4 KiB config space.
  [[nodiscard]] virtual std::uint32_t config_read(std::uint16_t offset, unsigned size) = 0;
  virtual void config_write(std::uint16_t offset, unsigned size, std::uint32_t value) = 0;
  // size is 4 or 8 bytes; bar 0..5.
  [[nodiscard]] virtual std::uint64_t mmio_read(unsigned bar, std::uint64_t offset, unsigned size) = 0;
  virtual void mmio_write(unsigned bar, std::uint64_t offset, unsigned size, std::uint64_t value) = 0;
  [[nodiscard]] virtual std::uint64_t bar_size(unsigned bar) const = 0;

  // Function Level Reset. Returns only after the 100 ms the PCIe spec makes
  // software wait before touching the function again (the cost every
  // reset-based restart pays).
  virtual void function_level_reset() = 0;
  [[nodiscard]] virtual std::uint64_t resets() const = 0;

 private:
  bdf address_;
};

}  // namespace keepalive::sim
