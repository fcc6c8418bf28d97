// Interrupt-remapping table entry: 128 bits, two little-endian words (lo = bits 63:0,
// hi = bits 127:64), remapped (IM=0) or posted (IM=1) format. Linux: struct irte
// (include/linux/dmar.h), dmar_copy_shared_irte(), modify_irte() (drivers/iommu/intel/
// irq_remapping.c). Bit positions: shared/reference/vtd-layouts.md 6.2, 6.3, 6.5.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <keepalive/hw/apic.hpp>
#include <keepalive/hw/bits.hpp>
#include <keepalive/types.hpp>

namespace keepalive::hw {

// SQ: which SID bits the IOMMU compares (Linux SQ_ALL_16, SQ_13_IGNORE_1/2/3).
enum class source_qualifier : std::uint8_t { all_16 = 0, ignore_1 = 1, ignore_2 = 2, ignore_3 = 3 };
// SVT (Linux SVT_NO_VERIFY, SVT_VERIFY_SID_SQ, SVT_VERIFY_BUS); 3 is reserved.
enum class source_validation : std::uint8_t { none = 0, sid_sq = 1, bus = 2, reserved = 3 };

class alignas(16) irte {
 public:
  using words_type = std::array<std::uint64_t, 2>;

  struct layout {
    // Both formats (the fields dmar_copy_shared_irte copies).
    static constexpr bit_field present = bit(0);
    static constexpr bit_field fpd = bit(1);
    static constexpr bit_field avail = bits(11, 8);
    static constexpr bit_field posted_mode = bit(15);  // IM
    static constexpr bit_field vector = bits(23, 16);  // V, or VV (virtual vector) when posted
    static constexpr bit_field sid = bits(79, 64);
    static constexpr bit_field sq = bits(81, 80);
    static constexpr bit_field svt = bits(83, 82);
    // Remapped only.
    static constexpr bit_field dest_mode = bit(2);
    static constexpr bit_field redirection_hint = bit(3);
    static constexpr bit_field trigger_mode = bit(4);
    static constexpr bit_field delivery_mode = bits(7, 5);
    static constexpr bit_field dst = bits(63, 32);
    // Posted only.
    static constexpr bit_field urgent = bit(14);
    static constexpr bit_field pda_low = bits(63, 38);    // PID address bits 31:6
    static constexpr bit_field pda_high = bits(127, 96);  // PID address bits 63:32
    // Reserved bits per format.
    static constexpr std::uint64_t remapped_reserved_lo = bits(14, 12).mask() | bits(31, 24).mask();
    static constexpr std::uint64_t remapped_reserved_hi = bits(127, 84).mask();
    static constexpr std::uint64_t xapic_dst_reserved_lo = bits(39, 32).mask() | bits(63, 48).mask();
    static constexpr std::uint64_t posted_reserved_lo = bits(7, 2).mask() | bits(13, 12).mask() | bits(37, 24).mask();
    static constexpr std::uint64_t posted_reserved_hi = bits(95, 84).mask();
  };

  constexpr irte() = default;
  [[nodiscard]] static constexpr irte from_words(std::uint64_t lo, std::uint64_t hi) noexcept {
    irte e;
    e.w_ = {lo, hi};
    return e;
  }
  [[nodiscard]] constexpr std::uint64_t lo() const noexcept { return w_[0]; }
  [[nodiscard]] constexpr std::uint64_t hi() const noexcept { return w_[1]; }
  [[nodiscard]] constexpr const words_type& words() const noexcept { return w_; }

  // Both formats.
  [[nodiscard]] constexpr bool present() const noexcept { return layout::present.get(w_) != 0; }
  constexpr void set_present(bool v) noexcept { layout::present.set(w_, v); }
  [[nodiscard]] constexpr bool fpd() const noexcept { return layout::fpd.get(w_) != 0; }
  constexpr void set_fpd(bool v) noexcept { layout::fpd.set(w_, v); }
  [[nodiscard]] constexpr std::uint8_t avail() const noexcept {
    return static_cast<std::uint8_t>(layout::avail.get(w_));
  }
  constexpr void set_avail(std::uint8_t v) noexcept { layout::avail.set(w_, v); }  // 4 bits
  [[nodiscard]] constexpr bool is_posted() const noexcept { return layout::posted_mode.get(w_) != 0; }
  constexpr void set_posted(bool v) noexcept { layout::posted_mode.set(w_, v); }
  // V (remapped) or VV, the guest vector set in PIR (posted).
  [[nodiscard]] constexpr keepalive::vector vector() const noexcept {
    return keepalive::vector{static_cast<std::uint8_t>(layout::vector.get(w_))};
  }
  constexpr void set_vector(keepalive::vector v) noexcept { layout::vector.set(w_, v.value()); }
  [[nodiscard]] constexpr std::uint16_t sid() const noexcept { return static_cast<std::uint16_t>(layout::sid.get(w_)); }
  constexpr void set_sid(std::uint16_t v) noexcept { layout::sid.set(w_, v); }
  constexpr void set_source(keepalive::bdf b) noexcept { set_sid(b.source_id()); }
  [[nodiscard]] constexpr source_qualifier sq() const noexcept {
    return static_cast<source_qualifier>(layout::sq.get(w_));
  }
  constexpr void set_sq(source_qualifier v) noexcept { layout::sq.set(w_, static_cast<std::uint64_t>(v)); }
  [[nodiscard]] constexpr source_validation svt() const noexcept {
    return static_cast<source_validation>(layout::svt.get(w_));
  }
  constexpr void set_svt(source_validation v) noexcept { layout::svt.set(w_, static_cast<std::uint64_t>(v)); }

  // Remapped format (meaningful when !is_posted()).
  [[nodiscard]] constexpr hw::dest_mode dest_mode() const noexcept {
    return static_cast<hw::dest_mode>(layout::dest_mode.get(w_));
  }
  constexpr void set_dest_mode(hw::dest_mode v) noexcept { layout::dest_mode.set(w_, static_cast<std::uint64_t>(v)); }
  [[nodiscard]] constexpr bool redirection_hint() const noexcept { return layout::redirection_hint.get(w_) != 0; }
  constexpr void set_redirection_hint(bool v) noexcept { layout::redirection_hint.set(w_, v); }
  [[nodiscard]] constexpr hw::trigger_mode trigger_mode() const noexcept {
    return static_cast<hw::trigger_mode>(layout::trigger_mode.get(w_));
  }
  constexpr void set_trigger_mode(hw::trigger_mode v) noexcept {
    layout::trigger_mode.set(w_, static_cast<std::uint64_t>(v));
  }
  [[nodiscard]] constexpr hw::delivery_mode delivery_mode() const noexcept {
    return static_cast<hw::delivery_mode>(layout::delivery_mode.get(w_));
  }
  constexpr void set_delivery_mode(hw::delivery_mode v) noexcept {
    layout::delivery_mode.set(w_, static_cast<std::uint64_t>(v));
  }
  // DST raw (bits 63:32); destination() decodes it per APIC mode.
  [[nodiscard]] constexpr std::uint32_t dst() const noexcept { return static_cast<std::uint32_t>(layout::dst.get(w_)); }
  constexpr void set_dst(std::uint32_t v) noexcept { layout::dst.set(w_, v); }
  [[nodiscard]] constexpr apic_id destination(apic_mode mode) const noexcept { return decode_destination(dst(), mode); }
  constexpr void set_destination(apic_id id, apic_mode mode) noexcept { set_dst(encode_destination(id, mode)); }

  // Posted format (meaningful when is_posted()).
  [[nodiscard]] constexpr bool urgent() const noexcept { return layout::urgent.get(w_) != 0; }
  constexpr void set_urgent(bool v) noexcept { layout::urgent.set(w_, v); }
  [[nodiscard]] constexpr std::uint32_t pda_low() const noexcept {
    return static_cast<std::uint32_t>(layout::pda_low.get(w_));
  }
  [[nodiscard]] constexpr std::uint32_t pda_high() const noexcept {
    return static_cast<std::uint32_t>(layout::pda_high.get(w_));
  }
  // The posted-interrupt descriptor address; bits 5:0 are not stored (the PID is 64-aligned).
  [[nodiscard]] constexpr hpa pda() const noexcept {
    return hpa{(std::uint64_t{pda_high()} << 32) | (std::uint64_t{pda_low()} << 6)};
  }
  constexpr void set_pda(hpa a) noexcept {
    layout::pda_low.set(w_, a.value() >> 6);  // Linux: (addr >> (32 - PDA_LOW_BIT)) & ((1 << 26) - 1)
    layout::pda_high.set(w_, a.value() >> 32);
  }

  // Whether any bit reserved in this entry's format (IM) is set. In xAPIC mode the DST bits
  // outside 47:40 are reserved too.
  [[nodiscard]] constexpr bool reserved_bits_set(apic_mode mode = apic_mode::x2apic) const noexcept {
    if (is_posted()) return (lo() & layout::posted_reserved_lo) != 0 || (hi() & layout::posted_reserved_hi) != 0;
    const std::uint64_t lo_mask =
        layout::remapped_reserved_lo | (mode == apic_mode::xapic ? layout::xapic_dst_reserved_lo : 0);
    return (lo() & lo_mask) != 0 || (hi() & layout::remapped_reserved_hi) != 0;
  }

  friend constexpr bool operator==(const irte&, const irte&) = default;

 private:
  words_type w_{};
};

static_assert(sizeof(irte) == 16 && alignof(irte) == 16);
static_assert(std::is_trivially_copyable_v<irte> && std::is_standard_layout_v<irte>);

// Linux dmar_copy_shared_irte(): P, FPD, AVAIL, IM, vector, SID, SQ, SVT from src into dst.
constexpr void copy_shared_fields(irte& dst, const irte& src) noexcept {
  dst.set_present(src.present());
  dst.set_fpd(src.fpd());
  dst.set_avail(src.avail());
  dst.set_posted(src.is_posted());
  dst.set_vector(src.vector());
  dst.set_sid(src.sid());
  dst.set_sq(src.sq());
  dst.set_svt(src.svt());
}

struct remapped_irte_fields {
  keepalive::vector vec{};
  apic_id destination{};
  apic_mode mode{apic_mode::x2apic};
  std::uint16_t sid{0};
  source_qualifier sq{source_qualifier::all_16};
  source_validation svt{source_validation::sid_sq};
  hw::delivery_mode delivery{hw::delivery_mode::fixed};
  hw::dest_mode dest{hw::dest_mode::physical};
  hw::trigger_mode trigger{hw::trigger_mode::edge};
  bool redirection_hint{false};  // Linux prepare_irte() sets it
  bool fpd{false};
  std::uint8_t avail{0};
  bool present{true};
};

struct posted_irte_fields {
  keepalive::vector vec{};  // VV: the guest vector
  hpa descriptor{};         // 64-byte aligned posted-interrupt descriptor
  std::uint16_t sid{0};
  source_qualifier sq{source_qualifier::all_16};
  source_validation svt{source_validation::sid_sq};
  bool urgent{false};
  bool fpd{false};
  std::uint8_t avail{0};
  bool present{true};
};

[[nodiscard]] constexpr irte make_remapped(const remapped_irte_fields& f) noexcept {
  irte e;
  e.set_present(f.present);
  e.set_fpd(f.fpd);
  e.set_dest_mode(f.dest);
  e.set_redirection_hint(f.redirection_hint);
  e.set_trigger_mode(f.trigger);
  e.set_delivery_mode(f.delivery);
  e.set_avail(f.avail);
  e.set_vector(f.vec);
  e.set_destination(f.destination, f.mode);
  e.set_sid(f.sid);
  e.set_sq(f.sq);
  e.set_svt(f.svt);
  return e;
}

[[nodiscard]] constexpr irte make_posted(const posted_irte_fields& f) noexcept {
  irte e;
  e.set_present(f.present);
  e.set_fpd(f.fpd);
  e.set_avail(f.avail);
  e.set_urgent(f.urgent);
  e.set_posted(true);
  e.set_vector(f.vec);
  e.set_pda(f.descriptor);
  e.set_sid(f.sid);
  e.set_sq(f.sq);
  e.set_svt(f.svt);
  return e;
}

// ---- The interrupt-remapping table and its register -------------------------------------

inline constexpr std::size_t irte_bytes = 16;
inline constexpr std::size_t ir_table_max_entries = 65536;  // Linux INTR_REMAP_TABLE_ENTRIES
inline constexpr std::size_t ir_table_max_bytes = ir_table_max_entries * irte_bytes;
inline constexpr std::uint32_t irta_register_offset = 0xB8;  // DMAR_IRTA_REG

// IRTA: base 63:12, EIME bit 11, S 3:0 giving 2^(S+1) entries.
class irta_reg {
 public:
  struct layout {
    static constexpr bit_field size = bits(3, 0);
    static constexpr bit_field eime = bit(11);
    static constexpr bit_field base = bits(63, 12);
    static constexpr std::uint64_t reserved = bits(10, 4).mask();
  };
  static constexpr std::uint8_t max_size_field = 0xF;  // Linux INTR_REMAP_TABLE_REG_SIZE

  constexpr irta_reg() = default;
  [[nodiscard]] static constexpr irta_reg from_raw(std::uint64_t v) noexcept {
    irta_reg r;
    r.raw_ = v;
    return r;
  }
  // base must be 4 KiB aligned (bits 11:0 are dropped); s is 4 bits.
  [[nodiscard]] static constexpr irta_reg make(hpa base, apic_mode mode, std::uint8_t s) noexcept {
    return from_raw(layout::base.insert(0, base.value() >> 12) | layout::eime.insert(0, mode == apic_mode::x2apic) |
                    layout::size.insert(0, s));
  }
  [[nodiscard]] constexpr std::uint64_t raw() const noexcept { return raw_; }
  [[nodiscard]] constexpr hpa base() const noexcept { return hpa{layout::base.extract(raw_) << 12}; }
  [[nodiscard]] constexpr apic_mode mode() const noexcept {
    return layout::eime.extract(raw_) != 0 ? apic_mode::x2apic : apic_mode::xapic;
  }
  [[nodiscard]] constexpr std::uint8_t size_field() const noexcept {
    return static_cast<std::uint8_t>(layout::size.extract(raw_));
  }
  [[nodiscard]] constexpr std::uint32_t entries() const noexcept { return std::uint32_t{2} << size_field(); }
  [[nodiscard]] constexpr bool reserved_bits_set() const noexcept { return (raw_ & layout::reserved) != 0; }
  friend constexpr bool operator==(const irta_reg&, const irta_reg&) = default;

 private:
  std::uint64_t raw_{0};
};

// ---- IRTEs in shared memory -----------------------------------------------------------
//
// An IR table lives in memory that another thread or process (the simulated IOMMU) reads
// while the kernel side rewrites entries. slot2 points at the entry's two words; it must be
// 16-byte aligned and writable (cmpxchg16b always writes, even to read). x86-64 only.
//
// Readers: irte_load() takes one atomic 128-bit snapshot. A snapshot with P = 0 is a
// not-present entry: the IOMMU raises an interrupt-remapping fault for it.
//
// Writers, two protocols, neither ever exposes a present entry with halves of two entries:
//  - irte_store(): lo with P cleared, then hi, then the final lo (release stores). This is
//    Linux's "clear P, modify, set P": an interrupt arriving in between faults (P = 0).
//  - irte_store_atomic() / irte_compare_exchange(): one cmpxchg16b, never not-present in
//    between. Linux modify_irte() does this when the old or the new entry is posted, which
//    is how a live device's entry moves between remapped and posted.
// irte_load() deliberately does not read lo, hi, lo and compare: two complete rewrites
// between its loads (A -> B -> A) would pass that check with lo of A and hi of B.

namespace detail {
struct irte_slot_words {
  std::uint64_t lo;
  std::uint64_t hi;
};
#if defined(__x86_64__)
// lock cmpxchg16b: on failure expected_* receive the current contents.
inline bool cmpxchg16b(std::uint64_t* slot2, std::uint64_t& expected_lo, std::uint64_t& expected_hi,
                       std::uint64_t desired_lo, std::uint64_t desired_hi) noexcept {
  bool equal = false;
  __asm__ __volatile__("lock cmpxchg16b %1"
                       : "=@ccz"(equal), "+m"(*reinterpret_cast<irte_slot_words*>(slot2)), "+a"(expected_lo),
                         "+d"(expected_hi)
                       : "b"(desired_lo), "c"(desired_hi)
                       : "memory");
  return equal;
}
#else
#error "keepalive/hw/irte.hpp: shared-memory IRTE access needs x86-64 (cmpxchg16b)"
#endif
}  // namespace detail

[[nodiscard]] inline irte irte_load(const std::uint64_t* slot2) noexcept {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  // Compare with 0:0, swap in 0:0: either way lo:hi end up holding one atomic snapshot.
  detail::cmpxchg16b(const_cast<std::uint64_t*>(slot2), lo, hi, 0, 0);
  return irte::from_words(lo, hi);
}

inline void irte_store(std::uint64_t* slot2, const irte& e) noexcept {
  std::atomic_ref<std::uint64_t> lo{slot2[0]};
  std::atomic_ref<std::uint64_t> hi{slot2[1]};
  lo.store(e.lo() & ~irte::layout::present.mask(), std::memory_order_release);
  hi.store(e.hi(), std::memory_order_release);
  lo.store(e.lo(), std::memory_order_release);
}

// Replaces the entry iff it still equals expected; otherwise expected receives the current one.
[[nodiscard]] inline bool irte_compare_exchange(std::uint64_t* slot2, irte& expected, const irte& desired) noexcept {
  std::uint64_t lo = expected.lo();
  std::uint64_t hi = expected.hi();
  const bool ok = detail::cmpxchg16b(slot2, lo, hi, desired.lo(), desired.hi());
  expected = irte::from_words(lo, hi);
  return ok;
}

// Atomically replaces the entry; returns the previous one.
inline irte irte_store_atomic(std::uint64_t* slot2, const irte& e) noexcept {
  irte old = irte::from_words(std::atomic_ref<std::uint64_t>{slot2[0]}.load(std::memory_order_relaxed),
                              std::atomic_ref<std::uint64_t>{slot2[1]}.load(std::memory_order_relaxed));
  while (!irte_compare_exchange(slot2, old, e)) {
  }
  return old;
}

}  // namespace keepalive::hw
