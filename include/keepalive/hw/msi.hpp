// MSI messages (remappable and compatibility format), the MSI-X table entry and the MSI-X
// capability. Linux: arch/x86/include/asm/msi.h (x86_msi_addr_lo, x86_msi_data),
// fill_msi_msg() in drivers/iommu/intel/irq_remapping.c, include/uapi/linux/pci_regs.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>

#include <keepalive/hw/apic.hpp>
#include <keepalive/hw/bits.hpp>
#include <keepalive/hw/pci.hpp>
#include <keepalive/types.hpp>

namespace keepalive::hw {

// An MSI write: 64-bit address (two dwords) and 32-bit data.
struct msi_message {
  std::uint32_t address_lo{0};
  std::uint32_t address_hi{0};
  std::uint32_t data{0};
  [[nodiscard]] constexpr std::uint64_t address() const noexcept {
    return (std::uint64_t{address_hi} << 32) | address_lo;
  }
  friend constexpr bool operator==(const msi_message&, const msi_message&) = default;
};

// Address fields (bit_field over the 32-bit address_lo / data words).
struct msi_layout {
  static constexpr bit_field base = bits(31, 20);  // 0xFEE for any interrupt message
  static constexpr bit_field format = bit(4);      // 1 = remappable
  // Remappable format.
  static constexpr bit_field handle_15 = bit(2);
  static constexpr bit_field subhandle_valid = bit(3);
  static constexpr bit_field handle_14_0 = bits(19, 5);
  static constexpr bit_field subhandle = bits(15, 0);  // data
  // Compatibility format.
  static constexpr bit_field dest_mode = bit(2);
  static constexpr bit_field redirection_hint = bit(3);
  static constexpr bit_field dest_id = bits(19, 12);
  static constexpr bit_field vector = bits(7, 0);          // data
  static constexpr bit_field delivery_mode = bits(10, 8);  // data
  static constexpr bit_field level_assert = bit(14);       // data
  static constexpr bit_field trigger_mode = bit(15);       // data
};
inline constexpr std::uint32_t msi_base_value = 0xFEE;
inline constexpr std::uint32_t msi_address_base = msi_base_value << 20;  // 0xFEE00000

enum class msi_format : std::uint8_t {
  remappable,        // 0xFEE, format bit 1: names an IRTE
  compatibility,     // 0xFEE, format bit 0: names an APIC directly (not remapped)
  not_an_interrupt,  // upper address not 0 or bits 31:20 not 0xFEE: an ordinary DMA write
};

[[nodiscard]] constexpr msi_format classify(const msi_message& m) noexcept {
  if (m.address_hi != 0 || msi_layout::base.extract(m.address_lo) != msi_base_value)
    return msi_format::not_an_interrupt;
  return msi_layout::format.extract(m.address_lo) != 0 ? msi_format::remappable : msi_format::compatibility;
}

struct remappable_msi {
  irte_index handle{};
  bool subhandle_valid{false};
  std::uint16_t subhandle{0};
  // The IRTE the IOMMU looks up: handle + subhandle when SHV, else handle. May exceed the
  // table (up to 0x1FFFE): compare with the IRTA size before indexing.
  [[nodiscard]] constexpr std::uint32_t effective_index() const noexcept {
    return std::uint32_t{handle.value()} + (subhandle_valid ? subhandle : 0u);
  }
  friend constexpr bool operator==(const remappable_msi&, const remappable_msi&) = default;
};

// Linux fill_msi_msg() always passes a subhandle (SHV = 1); without one SHV = 0, data = 0.
[[nodiscard]] constexpr msi_message encode_remappable(irte_index handle,
                                                      std::optional<std::uint16_t> subhandle = std::nullopt) noexcept {
  std::uint64_t a = msi_layout::base.insert(0, msi_base_value);
  a = msi_layout::format.insert(a, 1);
  a = msi_layout::handle_14_0.insert(a, handle.value() & 0x7FFFu);
  a = msi_layout::handle_15.insert(a, handle.value() >> 15);
  a = msi_layout::subhandle_valid.insert(a, subhandle.has_value());
  return msi_message{static_cast<std::uint32_t>(a), 0,
                     static_cast<std::uint32_t>(msi_layout::subhandle.insert(0, subhandle.value_or(0)))};
}

// nullopt unless classify(m) == msi_format::remappable.
[[nodiscard]] constexpr std::optional<remappable_msi> decode_remappable(const msi_message& m) noexcept {
  if (classify(m) != msi_format::remappable) return std::nullopt;
  const auto handle = static_cast<std::uint16_t>((msi_layout::handle_15.extract(m.address_lo) << 15) |
                                                 msi_layout::handle_14_0.extract(m.address_lo));
  const bool shv = msi_layout::subhandle_valid.extract(m.address_lo) != 0;
  return remappable_msi{irte_index{handle}, shv,
                        shv ? static_cast<std::uint16_t>(msi_layout::subhandle.extract(m.data)) : std::uint16_t{0}};
}

struct compatibility_msi {
  apic_id destination{};  // 8-bit xAPIC ID
  keepalive::vector vec{};
  hw::dest_mode dest{hw::dest_mode::physical};
  bool redirection_hint{false};
  hw::delivery_mode delivery{hw::delivery_mode::fixed};
  hw::trigger_mode trigger{hw::trigger_mode::edge};
  bool level_assert{false};
  friend constexpr bool operator==(const compatibility_msi&, const compatibility_msi&) = default;
};

[[nodiscard]] constexpr msi_message encode_compatibility(const compatibility_msi& c) noexcept {
  std::uint64_t a = msi_layout::base.insert(0, msi_base_value);
  a = msi_layout::dest_id.insert(a, c.destination.value());
  a = msi_layout::redirection_hint.insert(a, c.redirection_hint);
  a = msi_layout::dest_mode.insert(a, static_cast<std::uint64_t>(c.dest));
  std::uint64_t d = msi_layout::vector.insert(0, c.vec.value());
  d = msi_layout::delivery_mode.insert(d, static_cast<std::uint64_t>(c.delivery));
  d = msi_layout::level_assert.insert(d, c.level_assert);
  d = msi_layout::trigger_mode.insert(d, static_cast<std::uint64_t>(c.trigger));
  return msi_message{static_cast<std::uint32_t>(a), 0, static_cast<std::uint32_t>(d)};
}

// nullopt unless classify(m) == msi_format::compatibility.
[[nodiscard]] constexpr std::optional<compatibility_msi> decode_compatibility(const msi_message& m) noexcept {
  if (classify(m) != msi_format::compatibility) return std::nullopt;
  return compatibility_msi{
      apic_id{static_cast<std::uint32_t>(msi_layout::dest_id.extract(m.address_lo))},
      keepalive::vector{static_cast<std::uint8_t>(msi_layout::vector.extract(m.data))},
      static_cast<hw::dest_mode>(msi_layout::dest_mode.extract(m.address_lo)),
      msi_layout::redirection_hint.extract(m.address_lo) != 0,
      static_cast<hw::delivery_mode>(msi_layout::delivery_mode.extract(m.data)),
      static_cast<hw::trigger_mode>(msi_layout::trigger_mode.extract(m.data)),
      msi_layout::level_assert.extract(m.data) != 0,
  };
}

// ---- MSI-X table entry: 16 bytes, four dwords ---------------------------------------------
class msix_table_entry {
 public:
  using words_type = std::array<std::uint32_t, 4>;
  static constexpr std::size_t size = 16;
  static constexpr std::size_t address_lo_offset = 0;
  static constexpr std::size_t address_hi_offset = 4;
  static constexpr std::size_t data_offset = 8;
  static constexpr std::size_t vector_control_offset = 12;
  static constexpr std::uint32_t vector_control_masked = 1u << 0;  // PCI_MSIX_ENTRY_CTRL_MASKBIT

  constexpr msix_table_entry() = default;
  [[nodiscard]] static constexpr msix_table_entry from_words(const words_type& w) noexcept {
    msix_table_entry e;
    e.w_ = w;
    return e;
  }
  [[nodiscard]] constexpr const words_type& words() const noexcept { return w_; }

  [[nodiscard]] constexpr std::uint32_t address_lo() const noexcept { return w_[0]; }
  constexpr void set_address_lo(std::uint32_t v) noexcept { w_[0] = v; }
  [[nodiscard]] constexpr std::uint32_t address_hi() const noexcept { return w_[1]; }
  constexpr void set_address_hi(std::uint32_t v) noexcept { w_[1] = v; }
  [[nodiscard]] constexpr std::uint32_t data() const noexcept { return w_[2]; }
  constexpr void set_data(std::uint32_t v) noexcept { w_[2] = v; }
  [[nodiscard]] constexpr std::uint32_t vector_control() const noexcept { return w_[3]; }
  constexpr void set_vector_control(std::uint32_t v) noexcept { w_[3] = v; }
  [[nodiscard]] constexpr bool masked() const noexcept { return (w_[3] & vector_control_masked) != 0; }
  constexpr void set_masked(bool m) noexcept {
    w_[3] = m ? (w_[3] | vector_control_masked) : (w_[3] & ~vector_control_masked);
  }
  [[nodiscard]] constexpr msi_message message() const noexcept { return {w_[0], w_[1], w_[2]}; }
  constexpr void set_message(const msi_message& m) noexcept {
    w_[0] = m.address_lo;
    w_[1] = m.address_hi;
    w_[2] = m.data;
  }
  friend constexpr bool operator==(const msix_table_entry&, const msix_table_entry&) = default;

 private:
  words_type w_{};
};
static_assert(sizeof(msix_table_entry) == msix_table_entry::size && alignof(msix_table_entry) == 4);
static_assert(std::is_trivially_copyable_v<msix_table_entry> && std::is_standard_layout_v<msix_table_entry>);

// ---- MSI-X capability (offsets from the capability; pci::cap_id::msix) --------------------
namespace msix_cap {
inline constexpr std::uint16_t message_control = 0x02;  // 16 bits
inline constexpr std::uint16_t table = 0x04;            // 32 bits: offset | BIR
inline constexpr std::uint16_t pba = 0x08;              // 32 bits: offset | BIR
inline constexpr std::uint16_t size = 12;

inline constexpr std::uint16_t control_table_size_mask = 0x07FF;  // N - 1
inline constexpr std::uint16_t control_function_mask = 1u << 14;
inline constexpr std::uint16_t control_enable = 1u << 15;
inline constexpr std::uint32_t bir_mask = 0x7;
inline constexpr std::uint32_t offset_mask = ~bir_mask;
inline constexpr unsigned max_table_entries = 2048;

[[nodiscard]] constexpr unsigned table_entries(std::uint16_t control) noexcept {
  return (control & control_table_size_mask) + 1u;
}
// entries in 1..2048.
[[nodiscard]] constexpr std::uint16_t encode_table_size(unsigned entries) noexcept {
  return static_cast<std::uint16_t>((entries - 1) & control_table_size_mask);
}

struct bar_location {
  std::uint8_t bir{0};      // which BAR
  std::uint32_t offset{0};  // 8-byte aligned offset into it
  friend constexpr bool operator==(const bar_location&, const bar_location&) = default;
};
[[nodiscard]] constexpr bar_location decode_location(std::uint32_t reg) noexcept {
  return {static_cast<std::uint8_t>(reg & bir_mask), reg & offset_mask};
}
[[nodiscard]] constexpr std::uint32_t encode_location(bar_location l) noexcept {
  return (l.offset & offset_mask) | (l.bir & bir_mask);
}
// Pending-bit array: one bit per entry, in whole qwords.
[[nodiscard]] constexpr std::size_t pba_bytes(unsigned entries) noexcept { return (entries + 63u) / 64u * 8u; }
}  // namespace msix_cap

}  // namespace keepalive::hw
