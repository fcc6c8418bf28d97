#include <doctest/doctest.h>

#include <array>
#include <cstdint>

#include <keepalive/hw/pci.hpp>

using namespace keepalive::hw;

TEST_CASE("config header offsets and command/status bits (pci_regs.h values)") {
  CHECK(pci::command == 0x04);
  CHECK(pci::status == 0x06);
  CHECK(pci::capabilities_pointer == 0x34);
  CHECK(pci::bar_offset(0) == 0x10);
  CHECK(pci::bar_offset(5) == 0x24);
  CHECK(pci::command_memory_space == 0x0002);
  CHECK(pci::command_bus_master == 0x0004);
  CHECK(pci::command_intx_disable == 0x0400);
  CHECK(pci::status_capabilities_list == 0x0010);
  CHECK(pci::pcie_devcap_flr == 0x1000'0000u);
  CHECK(pci::pcie_devctl_initiate_flr == 0x8000);
  CHECK(pci::pcie_device_control == 0x08);
  CHECK(pci::flr_wait_ms == 100);
}

TEST_CASE("64-bit memory BAR: encode, decode, size probe") {
  const auto w = pci::encode_bar64(0x0000'0038'C000'0000u, true);
  CHECK(w[0] == 0xC000'000Cu);  // 64-bit type (bits 2:1 = 10) + prefetchable
  CHECK(w[1] == 0x38u);
  const auto b = pci::decode_memory_bar(w[0], w[1]);
  REQUIRE(b);
  CHECK(*b == pci::memory_bar{0x38'C000'0000u, true, true});
  CHECK(pci::decode_memory_bar(0xFEB0'0000u, 0xFFFF) == pci::memory_bar{0xFEB0'0000u, false, false});  // 32-bit
  CHECK_FALSE(pci::decode_memory_bar(0xC001u, 0));                                                     // I/O BAR
  CHECK_FALSE(pci::decode_memory_bar(0x2u, 0));                                                        // reserved type
  CHECK(pci::bar_size_from_probe(0xFFFF'C00Cu, 0xFFFF'FFFFu) == 0x4000u);                              // 16 KiB 64-bit
  CHECK(pci::bar_size_from_probe(0x0000'000Cu, 0xFFFF'FFFEu) == 0x2'0000'0000u);                       // 8 GiB
  CHECK(pci::bar_size_from_probe(0xFFF0'0000u, 0) == 0x10'0000u);                                      // 1 MiB 32-bit
  CHECK(pci::bar_size_from_probe(0, 0) == 0);                                                          // unimplemented
}

TEST_CASE("capability list walk") {
  std::array<std::uint8_t, 256> cfg{};
  cfg[pci::capabilities_pointer] = 0x40 | 0x3;  // low two bits are reserved
  cfg[0x40] = 0x01;                             // PM
  cfg[0x41] = 0x50;
  cfg[0x50] = 0x10;  // PCIe
  cfg[0x51] = 0x70;
  cfg[0x70] = 0x11;  // MSI-X
  cfg[0x71] = 0x00;
  auto read8 = [&](std::uint16_t off) { return cfg[off]; };
  CHECK(pci::find_capability(read8, pci::cap_id::power_management) == std::uint8_t{0x40});
  CHECK(pci::find_capability(read8, pci::cap_id::pcie) == std::uint8_t{0x50});
  CHECK(pci::find_capability(read8, pci::cap_id::msix) == std::uint8_t{0x70});
  CHECK_FALSE(pci::find_capability(read8, pci::cap_id::msi));
  cfg[0x71] = 0x40;  // a loop: stops after the TTL
  CHECK_FALSE(pci::find_capability(read8, pci::cap_id::msi));
  cfg[0x51] = 0x20;  // into the header: stops
  CHECK_FALSE(pci::find_capability(read8, pci::cap_id::msix));
  cfg[0x51] = 0x70;
  cfg[0x70] = 0xFF;  // nothing there
  CHECK_FALSE(pci::find_capability(read8, pci::cap_id::msix));
  static_assert(pci::find_capability(
                    [](std::uint16_t off) -> std::uint8_t { return off == 0x34   ? 0x40
                                                                   : off == 0x40 ? 0x11
                                                                                 : 0; },
                    pci::cap_id::msix) == std::uint8_t{0x40});
}
