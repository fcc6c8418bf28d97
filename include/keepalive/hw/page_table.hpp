// Second-level (legacy-mode) DMA page tables: the PTE format, a walker that translates as
// the IOMMU does, a builder (map/unmap with 2 MiB / 1 GiB superpages), and visitors.
// Linux: struct dma_pte (drivers/iommu/intel/iommu.h); QEMU: vtd_iova_to_slpte().
//
// Levels are numbered from the leaf: level 1 maps 4 KiB, level 2 2 MiB, level 3 1 GiB; a
// table of `levels` levels translates 12 + 9 * levels bits (3: 39, 4: 48, 5: 57). 2 to 5
// levels are accepted (context AW 0-3). Every table is 512 eight-byte entries (4 KiB).
//
// Concurrency: translate() and the visitors may run while map()/unmap() run in another
// thread; they see each entry either before or after its update (see phys_memory.hpp).
// map() and unmap() themselves are called by one thread at a time.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>

#include <keepalive/error.hpp>
#include <keepalive/hw/bits.hpp>
#include <keepalive/hw/phys_memory.hpp>
#include <keepalive/types.hpp>

namespace keepalive::hw {

inline constexpr unsigned pt_stride = 9;
inline constexpr std::size_t pt_entries = 512;
inline constexpr std::size_t pte_bytes = 8;
inline constexpr unsigned pt_min_levels = 2;
inline constexpr unsigned pt_max_levels = 5;

[[nodiscard]] constexpr unsigned level_shift(unsigned level) noexcept { return page_shift + pt_stride * (level - 1); }
// Bytes one entry of a level-`level` table covers (1: 4 KiB, 2: 2 MiB, 3: 1 GiB).
[[nodiscard]] constexpr std::uint64_t level_size(unsigned level) noexcept {
  return std::uint64_t{1} << level_shift(level);
}
[[nodiscard]] constexpr std::size_t level_index(std::uint64_t iova_value, unsigned level) noexcept {
  return static_cast<std::size_t>((iova_value >> level_shift(level)) & (pt_entries - 1));
}
// IOVA bits a table of `levels` levels translates.
[[nodiscard]] constexpr unsigned input_width(unsigned levels) noexcept { return page_shift + pt_stride * levels; }

enum class perm : std::uint8_t { none = 0, read = 1, write = 2, read_write = 3 };
[[nodiscard]] constexpr perm operator|(perm a, perm b) noexcept {
  return static_cast<perm>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
[[nodiscard]] constexpr perm operator&(perm a, perm b) noexcept {
  return static_cast<perm>(static_cast<unsigned>(a) & static_cast<unsigned>(b));
}
enum class dma_access : std::uint8_t { read, write };
[[nodiscard]] constexpr bool permits(perm p, dma_access a) noexcept {
  return (p & (a == dma_access::read ? perm::read : perm::write)) != perm::none;
}

class sl_pte {
 public:
  struct layout {
    static constexpr bit_field read = bit(0);
    static constexpr bit_field write = bit(1);
    static constexpr bit_field superpage = bit(7);  // PS
    static constexpr bit_field snoop = bit(11);     // SNP
    static constexpr bit_field address = bits(51, 12);
  };

  constexpr sl_pte() = default;
  [[nodiscard]] static constexpr sl_pte from_raw(std::uint64_t v) noexcept {
    sl_pte e;
    e.raw_ = v;
    return e;
  }
  // A leaf mapping `target` (4 KiB, or a superpage when superpage is set).
  [[nodiscard]] static constexpr sl_pte leaf(hpa target, perm p, bool superpage, bool snoop = false) noexcept {
    sl_pte e;
    e.set_address(target);
    e.set_perms(p);
    e.set_superpage(superpage);
    e.set_snoop(snoop);
    return e;
  }
  // A non-leaf entry: R and W set, as Linux does, so the leaves alone decide access.
  [[nodiscard]] static constexpr sl_pte table(hpa next) noexcept { return leaf(next, perm::read_write, false); }

  [[nodiscard]] constexpr std::uint64_t raw() const noexcept { return raw_; }
  [[nodiscard]] constexpr bool read() const noexcept { return layout::read.extract(raw_) != 0; }
  constexpr void set_read(bool v) noexcept { raw_ = layout::read.insert(raw_, v); }
  [[nodiscard]] constexpr bool write() const noexcept { return layout::write.extract(raw_) != 0; }
  constexpr void set_write(bool v) noexcept { raw_ = layout::write.insert(raw_, v); }
  [[nodiscard]] constexpr perm perms() const noexcept { return static_cast<perm>(raw_ & 3u); }
  constexpr void set_perms(perm p) noexcept { raw_ = (raw_ & ~std::uint64_t{3}) | static_cast<std::uint64_t>(p); }
  // Linux and QEMU: present means R or W.
  [[nodiscard]] constexpr bool present() const noexcept { return (raw_ & 3u) != 0; }
  [[nodiscard]] constexpr bool superpage() const noexcept { return layout::superpage.extract(raw_) != 0; }
  constexpr void set_superpage(bool v) noexcept { raw_ = layout::superpage.insert(raw_, v); }
  [[nodiscard]] constexpr bool snoop() const noexcept { return layout::snoop.extract(raw_) != 0; }
  constexpr void set_snoop(bool v) noexcept { raw_ = layout::snoop.insert(raw_, v); }
  // ADDR bits 51:12, in place (not shifted down).
  [[nodiscard]] constexpr hpa address() const noexcept { return hpa{raw_ & layout::address.mask()}; }
  constexpr void set_address(hpa a) noexcept { raw_ = layout::address.insert(raw_, a.value() >> page_shift); }

  // Whether the entry is a leaf at `level`: always at level 1, PS set above.
  [[nodiscard]] constexpr bool is_leaf(unsigned level) const noexcept { return level == 1 || superpage(); }
  // Reserved for a present entry at `level`: PS above level 3 (no 512 GiB pages); in a
  // superpage, the address bits below its size (20:12 for 2 MiB, 29:12 for 1 GiB).
  [[nodiscard]] constexpr bool reserved_bits_set(unsigned level) const noexcept {
    if (level == 1 || !superpage()) return false;
    if (level > 3) return true;
    return (raw_ & layout::address.mask() & (level_size(level) - 1)) != 0;
  }
  friend constexpr bool operator==(const sl_pte&, const sl_pte&) = default;

 private:
  std::uint64_t raw_{0};
};
static_assert(sizeof(sl_pte) == pte_bytes);

// ---- Walking --------------------------------------------------------------------------------

enum class fault_reason : std::uint8_t {
  not_present,           // entry at `level` has neither R nor W
  read_not_allowed,      // entry at `level` lacks R for a read
  write_to_readonly,     // entry at `level` lacks W for a write
  address_beyond_width,  // IOVA has bits above input_width(levels); level = levels
  reserved_bits_set,     // entry at `level` has reserved bits (sl_pte::reserved_bits_set)
  unsupported_levels,    // levels outside 2..5; level = levels
};

struct dma_fault {
  fault_reason reason{fault_reason::not_present};
  unsigned level{0};
  friend constexpr bool operator==(const dma_fault&, const dma_fault&) = default;
};

struct translation {
  hpa address{};  // translated address (page base + offset)
  std::uint64_t page_size{0};
  perm perms{perm::none};  // R/W ANDed over the whole walk
  unsigned level{0};       // level of the leaf
  bool snoop{false};
  friend constexpr bool operator==(const translation&, const translation&) = default;
};

class [[nodiscard]] walk_result {
 public:
  constexpr walk_result(translation t) noexcept : ok_{true}, t_{t} {}  // NOLINT implicit
  constexpr walk_result(dma_fault f) noexcept : ok_{false}, f_{f} {}   // NOLINT implicit
  [[nodiscard]] constexpr bool has_value() const noexcept { return ok_; }
  constexpr explicit operator bool() const noexcept { return ok_; }
  // Only when has_value().
  [[nodiscard]] constexpr const translation& value() const noexcept { return t_; }
  constexpr const translation& operator*() const noexcept { return t_; }
  constexpr const translation* operator->() const noexcept { return &t_; }
  // Only when !has_value().
  [[nodiscard]] constexpr const dma_fault& fault() const noexcept { return f_; }

 private:
  bool ok_;
  translation t_{};
  dma_fault f_{};
};

// Translates iova for `access` through the table at root. On each level, in order: not
// present, reserved bits, then the access right of the entry (so a permission fault names
// the first level lacking it).
template <readable_phys_memory M>
[[nodiscard]] walk_result translate(const M& mem, hpa root, unsigned levels, iova va, dma_access access) {
  if (levels < pt_min_levels || levels > pt_max_levels) return dma_fault{fault_reason::unsupported_levels, levels};
  if ((va.value() >> input_width(levels)) != 0) return dma_fault{fault_reason::address_beyond_width, levels};
  perm effective = perm::read_write;
  hpa table = root;
  for (unsigned level = levels;; --level) {
    const sl_pte e = sl_pte::from_raw(mem.load64(table + level_index(va.value(), level) * pte_bytes));
    if (!e.present()) return dma_fault{fault_reason::not_present, level};
    if (e.reserved_bits_set(level)) return dma_fault{fault_reason::reserved_bits_set, level};
    effective = effective & e.perms();
    if (!permits(effective, access))
      return dma_fault{access == dma_access::read ? fault_reason::read_not_allowed : fault_reason::write_to_readonly,
                       level};
    if (e.is_leaf(level)) {
      const std::uint64_t size = level_size(level);
      return translation{hpa{e.address().value() + (va.value() & (size - 1))}, size, effective, level, e.snoop()};
    }
    table = e.address();
  }
}

struct mapped_leaf {
  iova start{};            // first IOVA the leaf maps
  hpa target{};            // where it maps to
  std::uint64_t size{0};   // 4 KiB, 2 MiB, 1 GiB
  perm perms{perm::none};  // R/W ANDed over the path
  unsigned level{0};
  bool snoop{false};
  friend constexpr bool operator==(const mapped_leaf&, const mapped_leaf&) = default;
};

namespace detail {

[[nodiscard]] constexpr bool valid_levels(unsigned levels) noexcept {
  return levels >= pt_min_levels && levels <= pt_max_levels;
}
[[nodiscard]] constexpr bool range_fits(std::uint64_t start, std::uint64_t size, unsigned width) noexcept {
  const std::uint64_t limit = std::uint64_t{1} << width;
  return start < limit && size <= limit - start;
}

// Calls f(slot, entry, level, entry_base, effective_perms) for every present leaf that
// overlaps [start, end), in address order, descending through present tables. f returns
// false to stop; walk_leaves then returns false.
template <class M, class F>
bool walk_leaves(M& mem, hpa table, unsigned level, std::uint64_t start, std::uint64_t end, perm path, F& f) {
  const std::uint64_t size = level_size(level);
  for (std::uint64_t a = start; a < end;) {
    const std::uint64_t base = a & ~(size - 1);
    const std::uint64_t chunk_end = std::min(end, base + size);
    const hpa slot = table + level_index(a, level) * pte_bytes;
    const sl_pte e = sl_pte::from_raw(mem.load64(slot));
    if (e.present()) {
      const perm p = path & e.perms();
      if (e.is_leaf(level)) {
        if (!f(slot, e, level, base, p)) return false;
      } else if (!walk_leaves(mem, e.address(), level - 1, a, chunk_end, p, f)) {
        return false;
      }
    }
    a = chunk_end;
  }
  return true;
}

template <class M, class F>
void walk_tables(M& mem, hpa table, unsigned level, F& f) {
  if (level > 1) {
    for (std::size_t i = 0; i < pt_entries; ++i) {
      const sl_pte e = sl_pte::from_raw(mem.load64(table + i * pte_bytes));
      if (e.present() && !e.is_leaf(level)) walk_tables(mem, e.address(), level - 1, f);
    }
  }
  f(table, level);
}

// Maps [start, end) -> start + delta (mod 2^64) into the table at `level`. Assumes no present
// leaf overlaps the range. On page exhaustion returns false with `done` = first unmapped IOVA.
template <phys_memory M>
bool map_range(M& mem, hpa table, unsigned level, std::uint64_t start, std::uint64_t end, std::uint64_t delta, perm p,
               bool superpages, std::uint64_t& done) {
  const std::uint64_t size = level_size(level);
  for (std::uint64_t a = start; a < end;) {
    const std::uint64_t base = a & ~(size - 1);
    const std::uint64_t chunk_end = std::min(end, base + size);
    const hpa slot = table + level_index(a, level) * pte_bytes;
    const std::uint64_t pa = a + delta;
    if (level == 1) {
      mem.store64(slot, sl_pte::leaf(hpa{pa}, p, false).raw());
    } else {
      sl_pte e = sl_pte::from_raw(mem.load64(slot));
      if (!e.present()) {
        if (superpages && level <= 3 && a == base && chunk_end - base == size && (pa & (size - 1)) == 0) {
          mem.store64(slot, sl_pte::leaf(hpa{pa}, p, true).raw());
          a = done = chunk_end;
          continue;
        }
        const std::optional<hpa> page = mem.alloc_page();
        if (!page) return false;
        e = sl_pte::table(*page);
        mem.store64(slot, e.raw());
      }
      if (!map_range(mem, e.address(), level - 1, a, chunk_end, delta, p, superpages, done)) return false;
    }
    a = done = chunk_end;
  }
  return true;
}

}  // namespace detail

// Calls f(const mapped_leaf&) for every present leaf, in IOVA order.
template <readable_phys_memory M, class F>
void for_each_leaf(const M& mem, hpa root, unsigned levels, F&& f) {
  if (!detail::valid_levels(levels)) return;
  auto visit = [&](hpa, sl_pte e, unsigned level, std::uint64_t base, perm p) {
    f(mapped_leaf{iova{base}, e.address(), level_size(level), p, level, e.snoop()});
    return true;
  };
  detail::walk_leaves(mem, root, levels, 0, std::uint64_t{1} << input_width(levels), perm::read_write, visit);
}

// Calls f(hpa table, unsigned level) for every table, root included, children before parents
// (the pages a handover must preserve; the order free_tables() frees them).
template <readable_phys_memory M, class F>
void for_each_table(const M& mem, hpa root, unsigned levels, F&& f) {
  if (detail::valid_levels(levels)) detail::walk_tables(mem, root, levels, f);
}

// Frees every table under root and root itself. Not while a walker may still use them.
template <phys_memory M>
void free_tables(M& mem, hpa root, unsigned levels) {
  for_each_table(mem, root, levels, [&](hpa t, unsigned) { mem.free_page(t); });
}

// Maps [va, va + size) to [pa, pa + size) with perms p. With allow_superpages, uses a 2 MiB or
// 1 GiB leaf wherever both addresses are aligned to it, the range covers it and no table
// already sits there. All or nothing: errc::invalid for bad arguments (alignment, width,
// perm::none, levels), errc::busy if anything in the range is already mapped, errc::no_memory
// when pages run out (what was mapped is unmapped again; new empty tables stay).
template <phys_memory M>
status map(M& mem, hpa root, unsigned levels, iova va, hpa pa, std::uint64_t size, perm p, bool allow_superpages) {
  if (!detail::valid_levels(levels)) return {errc::invalid, "map: levels must be 2..5"};
  if (size == 0 || (va.value() | pa.value() | size) % page_bytes != 0)
    return {errc::invalid, "map: iova, hpa and size must be 4 KiB multiples, size > 0"};
  if (!detail::range_fits(va.value(), size, input_width(levels))) return {errc::invalid, "map: iova beyond the width"};
  if (!detail::range_fits(pa.value(), size, max_haw)) return {errc::invalid, "map: hpa beyond the host address width"};
  if (p == perm::none) return {errc::invalid, "map: no access rights"};
  const std::uint64_t start = va.value();
  const std::uint64_t end = start + size;
  bool overlap = false;
  auto any = [&](hpa, sl_pte, unsigned, std::uint64_t, perm) {
    overlap = true;
    return false;
  };
  detail::walk_leaves(mem, root, levels, start, end, perm::read_write, any);
  if (overlap) return {errc::busy, "map: range already mapped"};
  std::uint64_t done = start;
  if (!detail::map_range(mem, root, levels, start, end, pa.value() - start, p, allow_superpages, done)) {
    auto clear = [&](hpa slot, sl_pte, unsigned, std::uint64_t, perm) {
      mem.store64(slot, 0);
      return true;
    };
    detail::walk_leaves(mem, root, levels, start, done, perm::read_write, clear);
    return {errc::no_memory, "map: out of page-table pages"};
  }
  return {};
}

// Clears every leaf in [va, va + size); holes are skipped. Returns the bytes unmapped. A
// superpage only partly inside the range is errc::invalid and nothing is changed. Tables are
// kept (free_tables() releases them).
template <phys_memory M>
result<std::uint64_t> unmap(M& mem, hpa root, unsigned levels, iova va, std::uint64_t size) {
  if (!detail::valid_levels(levels)) return error{errc::invalid, "unmap: levels must be 2..5"};
  if ((va.value() | size) % page_bytes != 0)
    return error{errc::invalid, "unmap: iova and size must be 4 KiB multiples"};
  if (!detail::range_fits(va.value(), size, input_width(levels)))
    return error{errc::invalid, "unmap: iova beyond the width"};
  const std::uint64_t start = va.value();
  const std::uint64_t end = start + size;
  auto contained = [&](hpa, sl_pte, unsigned level, std::uint64_t base, perm) {
    return base >= start && base + level_size(level) <= end;
  };
  if (!detail::walk_leaves(mem, root, levels, start, end, perm::read_write, contained))
    return error{errc::invalid, "unmap: range splits a superpage"};
  std::uint64_t bytes = 0;
  auto clear = [&](hpa slot, sl_pte, unsigned level, std::uint64_t, perm) {
    mem.store64(slot, 0);
    bytes += level_size(level);
    return true;
  };
  detail::walk_leaves(mem, root, levels, start, end, perm::read_write, clear);
  return bytes;
}

}  // namespace keepalive::hw
