// Legacy-mode root and context entries (128 bits each, two little-endian words) and the
// bus/devfn lookup the IOMMU does before walking second-level tables.
// Linux: struct root_entry, struct context_entry (drivers/iommu/intel/iommu.h);
// QEMU: VTD_ROOT_ENTRY_*, VTD_CONTEXT_ENTRY_* (hw/i386/intel_iommu_internal.h).
//
// root table:    256 root entries, one per bus, 4 KiB; its address is in DMAR_RTADDR_REG.
// context table: 256 context entries, one per devfn, 4 KiB.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <keepalive/hw/bits.hpp>
#include <keepalive/hw/phys_memory.hpp>
#include <keepalive/types.hpp>

namespace keepalive::hw {

inline constexpr std::size_t root_entries = 256;
inline constexpr std::size_t context_entries = 256;
inline constexpr std::size_t root_entry_bytes = 16;
inline constexpr std::size_t context_entry_bytes = 16;
inline constexpr std::uint32_t rtaddr_register_offset = 0x20;    // DMAR_RTADDR_REG
inline constexpr std::uint64_t rtaddr_scalable_mode = 1u << 10;  // DMA_RTADDR_SMT

// Bits of a 64-bit pointer at or above the host address width.
[[nodiscard]] constexpr std::uint64_t above_haw_mask(unsigned haw) noexcept {
  return haw >= 64 ? 0 : ~((std::uint64_t{1} << haw) - 1);
}

class root_entry {
 public:
  using words_type = std::array<std::uint64_t, 2>;
  struct layout {
    static constexpr bit_field present = bit(0);
    static constexpr bit_field context_table = bits(63, 12);  // CTP
    static constexpr std::uint64_t reserved_lo = bits(11, 1).mask();
    static constexpr std::uint64_t reserved_hi = ~std::uint64_t{0};
  };

  constexpr root_entry() = default;
  [[nodiscard]] static constexpr root_entry from_words(std::uint64_t lo, std::uint64_t hi) noexcept {
    root_entry e;
    e.w_ = {lo, hi};
    return e;
  }
  [[nodiscard]] static constexpr root_entry make(hpa context_table) noexcept {
    root_entry e;
    e.set_context_table(context_table);
    e.set_present(true);
    return e;
  }
  [[nodiscard]] constexpr std::uint64_t lo() const noexcept { return w_[0]; }
  [[nodiscard]] constexpr std::uint64_t hi() const noexcept { return w_[1]; }
  [[nodiscard]] constexpr const words_type& words() const noexcept { return w_; }

  [[nodiscard]] constexpr bool present() const noexcept { return layout::present.get(w_) != 0; }
  constexpr void set_present(bool v) noexcept { layout::present.set(w_, v); }
  // 4 KiB aligned; bits 11:0 of the argument are dropped.
  [[nodiscard]] constexpr hpa context_table() const noexcept { return hpa{w_[0] & layout::context_table.mask()}; }
  constexpr void set_context_table(hpa a) noexcept { layout::context_table.set(w_, a.value() >> page_shift); }

  [[nodiscard]] constexpr bool reserved_bits_set(unsigned haw = max_haw) const noexcept {
    return (w_[0] & (layout::reserved_lo | above_haw_mask(haw))) != 0 || (w_[1] & layout::reserved_hi) != 0;
  }
  friend constexpr bool operator==(const root_entry&, const root_entry&) = default;

 private:
  words_type w_{};
};
static_assert(sizeof(root_entry) == root_entry_bytes && alignof(root_entry) == 8);
static_assert(std::is_trivially_copyable_v<root_entry> && std::is_standard_layout_v<root_entry>);

// TT: Linux CONTEXT_TT_MULTI_LEVEL, CONTEXT_TT_DEV_IOTLB, CONTEXT_TT_PASS_THROUGH.
enum class translation_type : std::uint8_t { multi_level = 0, dev_iotlb = 1, pass_through = 2, reserved = 3 };

// AW (address width) <-> table levels: AW 0 = 30-bit/2-level, 1 = 39/3, 2 = 48/4, 3 = 57/5.
[[nodiscard]] constexpr unsigned levels_for_aw(std::uint8_t aw) noexcept { return aw + 2u; }
[[nodiscard]] constexpr std::uint8_t aw_for_levels(unsigned levels) noexcept {
  return static_cast<std::uint8_t>(levels - 2);
}
[[nodiscard]] constexpr unsigned address_width_for_aw(std::uint8_t aw) noexcept { return 30u + 9u * aw; }
inline constexpr std::uint8_t max_aw = 3;

class context_entry {
 public:
  using words_type = std::array<std::uint64_t, 2>;
  struct layout {
    static constexpr bit_field present = bit(0);
    static constexpr bit_field fpd = bit(1);
    static constexpr bit_field translation_type = bits(3, 2);
    static constexpr bit_field slptptr = bits(63, 12);
    static constexpr bit_field address_width = bits(66, 64);
    static constexpr bit_field avail = bits(70, 67);
    static constexpr bit_field domain_id = bits(87, 72);
    static constexpr std::uint64_t reserved_lo = bits(11, 4).mask();
    static constexpr std::uint64_t reserved_hi = bit(71).mask() | bits(127, 88).mask();  // QEMU 0xffffffffff000080
  };

  constexpr context_entry() = default;
  [[nodiscard]] static constexpr context_entry from_words(std::uint64_t lo, std::uint64_t hi) noexcept {
    context_entry e;
    e.w_ = {lo, hi};
    return e;
  }
  // A present multi-level entry: second-level table at slptptr with `levels` levels.
  [[nodiscard]] static constexpr context_entry make(
      hpa slptptr, unsigned levels, keepalive::domain_id did,
      hw::translation_type tt = hw::translation_type::multi_level) noexcept {
    context_entry e;
    e.set_slptptr(slptptr);
    e.set_address_width(aw_for_levels(levels));
    e.set_domain_id(did);
    e.set_translation_type(tt);
    e.set_present(true);
    return e;
  }
  [[nodiscard]] constexpr std::uint64_t lo() const noexcept { return w_[0]; }
  [[nodiscard]] constexpr std::uint64_t hi() const noexcept { return w_[1]; }
  [[nodiscard]] constexpr const words_type& words() const noexcept { return w_; }

  [[nodiscard]] constexpr bool present() const noexcept { return layout::present.get(w_) != 0; }
  constexpr void set_present(bool v) noexcept { layout::present.set(w_, v); }
  [[nodiscard]] constexpr bool fpd() const noexcept { return layout::fpd.get(w_) != 0; }
  constexpr void set_fpd(bool v) noexcept { layout::fpd.set(w_, v); }
  [[nodiscard]] constexpr hw::translation_type translation_type() const noexcept {
    return static_cast<hw::translation_type>(layout::translation_type.get(w_));
  }
  constexpr void set_translation_type(hw::translation_type t) noexcept {
    layout::translation_type.set(w_, static_cast<std::uint64_t>(t));
  }
  // 4 KiB aligned; bits 11:0 of the argument are dropped.
  [[nodiscard]] constexpr hpa slptptr() const noexcept { return hpa{w_[0] & layout::slptptr.mask()}; }
  constexpr void set_slptptr(hpa a) noexcept { layout::slptptr.set(w_, a.value() >> page_shift); }
  [[nodiscard]] constexpr std::uint8_t address_width() const noexcept {
    return static_cast<std::uint8_t>(layout::address_width.get(w_));
  }
  constexpr void set_address_width(std::uint8_t aw) noexcept { layout::address_width.set(w_, aw); }
  [[nodiscard]] constexpr unsigned levels() const noexcept { return levels_for_aw(address_width()); }
  [[nodiscard]] constexpr std::uint8_t avail() const noexcept {
    return static_cast<std::uint8_t>(layout::avail.get(w_));
  }
  constexpr void set_avail(std::uint8_t v) noexcept { layout::avail.set(w_, v); }  // 4 bits
  [[nodiscard]] constexpr keepalive::domain_id domain_id() const noexcept {
    return keepalive::domain_id{static_cast<std::uint16_t>(layout::domain_id.get(w_))};
  }
  constexpr void set_domain_id(keepalive::domain_id d) noexcept { layout::domain_id.set(w_, d.value()); }

  [[nodiscard]] constexpr bool reserved_bits_set(unsigned haw = max_haw) const noexcept {
    return (w_[0] & (layout::reserved_lo | above_haw_mask(haw))) != 0 || (w_[1] & layout::reserved_hi) != 0;
  }
  // A reserved TT, or (when translating) an AW beyond 5 levels.
  [[nodiscard]] constexpr bool invalid_encoding() const noexcept {
    const auto tt = translation_type();
    return tt == hw::translation_type::reserved ||
           (tt != hw::translation_type::pass_through && address_width() > max_aw);
  }
  friend constexpr bool operator==(const context_entry&, const context_entry&) = default;

 private:
  words_type w_{};
};
static_assert(sizeof(context_entry) == context_entry_bytes && alignof(context_entry) == 8);
static_assert(std::is_trivially_copyable_v<context_entry> && std::is_standard_layout_v<context_entry>);

[[nodiscard]] constexpr hpa root_entry_address(hpa root_table, std::uint8_t bus) noexcept {
  return root_table + std::uint64_t{bus} * root_entry_bytes;
}
[[nodiscard]] constexpr hpa context_entry_address(hpa context_table, std::uint8_t devfn) noexcept {
  return context_table + std::uint64_t{devfn} * context_entry_bytes;
}

// Entry reads and writes through a memory provider (protocol: read_entry128/write_entry128).
template <readable_phys_memory M>
[[nodiscard]] root_entry read_root_entry(const M& mem, hpa root_table, std::uint8_t bus) {
  const auto w = read_entry128(mem, root_entry_address(root_table, bus));
  return root_entry::from_words(w[0], w[1]);
}
template <phys_memory M>
void write_root_entry(M& mem, hpa root_table, std::uint8_t bus, const root_entry& e) {
  write_entry128(mem, root_entry_address(root_table, bus), e.words());
}
template <readable_phys_memory M>
[[nodiscard]] context_entry read_context_entry(const M& mem, hpa context_table, std::uint8_t devfn) {
  const auto w = read_entry128(mem, context_entry_address(context_table, devfn));
  return context_entry::from_words(w[0], w[1]);
}
template <phys_memory M>
void write_context_entry(M& mem, hpa context_table, std::uint8_t devfn, const context_entry& e) {
  write_entry128(mem, context_entry_address(context_table, devfn), e.words());
}

enum class context_fault : std::uint8_t {
  root_not_present,
  root_reserved_bits,
  context_not_present,
  context_reserved_bits,
  context_invalid,  // context_entry::invalid_encoding()
};

struct resolved_context {
  context_entry entry{};
  hpa entry_address{};
  friend constexpr bool operator==(const resolved_context&, const resolved_context&) = default;
};

class [[nodiscard]] context_lookup {
 public:
  constexpr context_lookup(resolved_context r) noexcept : ok_{true}, r_{r} {}  // NOLINT implicit
  constexpr context_lookup(context_fault f) noexcept : ok_{false}, f_{f} {}    // NOLINT implicit
  [[nodiscard]] constexpr bool has_value() const noexcept { return ok_; }
  constexpr explicit operator bool() const noexcept { return ok_; }
  [[nodiscard]] constexpr const resolved_context& value() const noexcept { return r_; }  // when has_value()
  constexpr const resolved_context& operator*() const noexcept { return r_; }
  constexpr const resolved_context* operator->() const noexcept { return &r_; }
  [[nodiscard]] constexpr context_fault fault() const noexcept { return f_; }  // when !has_value()

 private:
  bool ok_;
  resolved_context r_{};
  context_fault f_{context_fault::root_not_present};
};

// Root entry for the bus, then context entry for the devfn. The segment selects the IOMMU,
// not an entry, and is ignored here.
template <readable_phys_memory M>
context_lookup resolve_context(const M& mem, hpa root_table, bdf dev, unsigned haw = max_haw) {
  const root_entry r = read_root_entry(mem, root_table, dev.bus());
  if (!r.present()) return context_fault::root_not_present;
  if (r.reserved_bits_set(haw)) return context_fault::root_reserved_bits;
  const hpa at = context_entry_address(r.context_table(), dev.devfn());
  const context_entry c = read_context_entry(mem, r.context_table(), dev.devfn());
  if (!c.present()) return context_fault::context_not_present;
  if (c.reserved_bits_set(haw)) return context_fault::context_reserved_bits;
  if (c.invalid_encoding()) return context_fault::context_invalid;
  return resolved_context{c, at};
}

}  // namespace keepalive::hw
