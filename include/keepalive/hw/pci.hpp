// The PCI configuration-space pieces keepalive touches: header offsets, command/status bits,
// 64-bit memory BARs, the capability list, and the PCIe capability's FLR bits.
// Linux names: include/uapi/linux/pci_regs.h.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

namespace keepalive::hw::pci {

// Type 0 header offsets.
inline constexpr std::uint16_t vendor_id = 0x00;
inline constexpr std::uint16_t device_id = 0x02;
inline constexpr std::uint16_t command = 0x04;
inline constexpr std::uint16_t status = 0x06;
inline constexpr std::uint16_t revision_id = 0x08;
inline constexpr std::uint16_t class_code = 0x09;  // 3 bytes
inline constexpr std::uint16_t header_type = 0x0E;
inline constexpr std::uint16_t bar0 = 0x10;
inline constexpr unsigned bar_count = 6;
inline constexpr std::uint16_t subsystem_vendor_id = 0x2C;
inline constexpr std::uint16_t subsystem_id = 0x2E;
inline constexpr std::uint16_t capabilities_pointer = 0x34;
inline constexpr std::uint16_t interrupt_line = 0x3C;
inline constexpr std::uint16_t interrupt_pin = 0x3D;
inline constexpr std::uint16_t config_space_size = 256;
inline constexpr std::uint16_t extended_config_space_size = 4096;

[[nodiscard]] constexpr std::uint16_t bar_offset(unsigned index) noexcept {
  return static_cast<std::uint16_t>(bar0 + 4 * index);
}

// Command register (16 bits).
inline constexpr std::uint16_t command_io_space = 1u << 0;
inline constexpr std::uint16_t command_memory_space = 1u << 1;
inline constexpr std::uint16_t command_bus_master = 1u << 2;
inline constexpr std::uint16_t command_intx_disable = 1u << 10;

// Status register (16 bits).
inline constexpr std::uint16_t status_interrupt = 1u << 3;
inline constexpr std::uint16_t status_capabilities_list = 1u << 4;

// ---- Memory BARs --------------------------------------------------------------------------
inline constexpr std::uint32_t bar_io_space = 1u << 0;
inline constexpr std::uint32_t bar_type_mask = 0x6u;  // bits 2:1
inline constexpr std::uint32_t bar_type_32 = 0x0u;
inline constexpr std::uint32_t bar_type_64 = 0x4u;
inline constexpr std::uint32_t bar_prefetchable = 1u << 3;
inline constexpr std::uint32_t bar_memory_address_mask = ~0xFu;

struct memory_bar {
  std::uint64_t address{0};
  bool is_64bit{false};
  bool prefetchable{false};
  friend constexpr bool operator==(const memory_bar&, const memory_bar&) = default;
};

// The two dwords of a 64-bit memory BAR (low at bar_offset(i), high at bar_offset(i + 1)).
// address must be 16-byte aligned (real BARs: aligned to their size).
[[nodiscard]] constexpr std::array<std::uint32_t, 2> encode_bar64(std::uint64_t address, bool prefetchable) noexcept {
  return {static_cast<std::uint32_t>(address & bar_memory_address_mask) | bar_type_64 |
              (prefetchable ? bar_prefetchable : 0u),
          static_cast<std::uint32_t>(address >> 32)};
}

// Decodes a memory BAR; hi is used only for a 64-bit BAR. nullopt for an I/O BAR or a
// reserved type (bits 2:1 = 01 or 11).
[[nodiscard]] constexpr std::optional<memory_bar> decode_memory_bar(std::uint32_t lo, std::uint32_t hi) noexcept {
  if ((lo & bar_io_space) != 0) return std::nullopt;
  const std::uint32_t type = lo & bar_type_mask;
  if (type != bar_type_32 && type != bar_type_64) return std::nullopt;
  const bool is64 = type == bar_type_64;
  return memory_bar{(is64 ? std::uint64_t{hi} << 32 : 0) | (lo & bar_memory_address_mask), is64,
                    (lo & bar_prefetchable) != 0};
}

// Size of a memory BAR from what reads back after writing all-ones to it (hi: the upper
// dword's read-back for a 64-bit BAR, ignored otherwise). 0 if the BAR is unimplemented.
[[nodiscard]] constexpr std::uint64_t bar_size_from_probe(std::uint32_t lo_readback,
                                                          std::uint32_t hi_readback) noexcept {
  const bool is64 = (lo_readback & bar_type_mask) == bar_type_64;
  const std::uint64_t mask =
      (is64 ? std::uint64_t{hi_readback} << 32 : 0xFFFF'FFFF'0000'0000u) | (lo_readback & bar_memory_address_mask);
  if ((mask & 0xFFFF'FFF0u) == 0 && (!is64 || hi_readback == 0)) return 0;
  return ~mask + 1;
}

// ---- Capability list --------------------------------------------------------------------
enum class cap_id : std::uint8_t { power_management = 0x01, msi = 0x05, vendor = 0x09, pcie = 0x10, msix = 0x11 };

inline constexpr std::uint16_t cap_id_offset = 0;    // within a capability
inline constexpr std::uint16_t cap_next_offset = 1;  // within a capability
inline constexpr std::uint8_t cap_pointer_mask = 0xFC;
inline constexpr std::uint16_t cap_first_offset = 0x40;  // capabilities live after the header
inline constexpr unsigned cap_walk_ttl = 48;             // Linux PCI_FIND_CAP_TTL

// Finds a capability's offset. read8(offset) reads one config-space byte. Stops on a null or
// out-of-header pointer, an 0xFF id (nothing there) or after cap_walk_ttl hops (a loop).
// Callers check status_capabilities_list first.
template <class Read8>
[[nodiscard]] constexpr std::optional<std::uint8_t> find_capability(Read8 read8, cap_id want) {
  std::uint8_t pos = static_cast<std::uint8_t>(read8(capabilities_pointer) & cap_pointer_mask);
  for (unsigned hop = 0; hop < cap_walk_ttl && pos >= cap_first_offset; ++hop) {
    const std::uint8_t id = read8(static_cast<std::uint16_t>(pos + cap_id_offset));
    if (id == 0xFF) break;
    if (id == static_cast<std::uint8_t>(want)) return pos;
    pos = static_cast<std::uint8_t>(read8(static_cast<std::uint16_t>(pos + cap_next_offset)) & cap_pointer_mask);
  }
  return std::nullopt;
}

// ---- PCI Express capability (offsets from the capability) ---------------------------------
inline constexpr std::uint16_t pcie_device_capabilities = 0x04;             // 32 bits
inline constexpr std::uint16_t pcie_device_control = 0x08;                  // 16 bits
inline constexpr std::uint16_t pcie_device_status = 0x0A;                   // 16 bits
inline constexpr std::uint32_t pcie_devcap_flr = 1u << 28;                  // PCI_EXP_DEVCAP_FLR
inline constexpr std::uint16_t pcie_devctl_initiate_flr = 1u << 15;         // PCI_EXP_DEVCTL_BCR_FLR
inline constexpr std::uint16_t pcie_devsta_transactions_pending = 1u << 5;  // PCI_EXP_DEVSTA_TRPND
// After initiating FLR, software waits 100 ms before touching the function's config space.
inline constexpr unsigned flr_wait_ms = 100;

}  // namespace keepalive::hw::pci
