#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>

#include <keepalive/hw/irte.hpp>

#include "field_check.hpp"

using namespace keepalive;
using namespace keepalive::hw;
using hwtest::check_field;
using hwtest::words;

namespace {
const auto from = [](const words<2>& w) { return irte::from_words(w[0], w[1]); };
const auto to = [](const irte& e) { return e.words(); };

template <class Set, class Get, class V>
void field(std::uint64_t mask_lo, std::uint64_t mask_hi, Set set, Get get, V max, V zero,
           std::initializer_list<V> samples) {
  check_field<2>({mask_lo, mask_hi}, from, to, set, get, max, zero, samples);
}
}  // namespace

// Positions, as the layout tables claim them (the field tests below prove the accessors).
static_assert(irte::layout::present.first_bit() == 0);
static_assert(irte::layout::posted_mode.first_bit() == 15);
static_assert(irte::layout::vector.first_bit() == 16 && irte::layout::vector.width == 8);
static_assert(irte::layout::dst.first_bit() == 32 && irte::layout::dst.last_bit() == 63);
static_assert(irte::layout::sid.first_bit() == 64 && irte::layout::svt.last_bit() == 83);
static_assert(irte::layout::pda_low.first_bit() == 38 && irte::layout::pda_low.width == 26);
static_assert(irte::layout::pda_high.first_bit() == 96 && irte::layout::pda_high.width == 32);
static_assert(sizeof(irte) == 16 && alignof(irte) == 16);
static_assert(irte_bytes * ir_table_max_entries == 1024 * 1024);

TEST_CASE("IRTE shared fields: each owns exactly its bits") {
  field(
      0x1, 0, [](irte& e, bool v) { e.set_present(v); }, [](const irte& e) { return e.present(); }, true, false,
      {true, false});
  field(
      0x2, 0, [](irte& e, bool v) { e.set_fpd(v); }, [](const irte& e) { return e.fpd(); }, true, false, {true, false});
  field(
      0xF00, 0, [](irte& e, std::uint8_t v) { e.set_avail(v); }, [](const irte& e) { return e.avail(); },
      std::uint8_t{0xF}, std::uint8_t{0}, {std::uint8_t{0x5}, std::uint8_t{0xA}, std::uint8_t{0x1}});
  field(
      0x8000, 0, [](irte& e, bool v) { e.set_posted(v); }, [](const irte& e) { return e.is_posted(); }, true, false,
      {true, false});
  field(
      0xFF0000, 0, [](irte& e, vector v) { e.set_vector(v); }, [](const irte& e) { return e.vector(); }, vector{0xFF},
      vector{0}, {vector{0x30}, vector{0xA5}, vector{0xEC}});
  field(
      0, 0xFFFF, [](irte& e, std::uint16_t v) { e.set_sid(v); }, [](const irte& e) { return e.sid(); },
      std::uint16_t{0xFFFF}, std::uint16_t{0}, {std::uint16_t{0x0010}, std::uint16_t{0x3AFF}, std::uint16_t{0x8001}});
  field(
      0, 0x30000, [](irte& e, source_qualifier v) { e.set_sq(v); }, [](const irte& e) { return e.sq(); },
      source_qualifier::ignore_3, source_qualifier::all_16,
      {source_qualifier::ignore_1, source_qualifier::ignore_2, source_qualifier::all_16});
  field(
      0, 0xC0000, [](irte& e, source_validation v) { e.set_svt(v); }, [](const irte& e) { return e.svt(); },
      source_validation::reserved, source_validation::none, {source_validation::sid_sq, source_validation::bus});
}

TEST_CASE("IRTE remapped fields: each owns exactly its bits") {
  field(
      0x4, 0, [](irte& e, dest_mode v) { e.set_dest_mode(v); }, [](const irte& e) { return e.dest_mode(); },
      dest_mode::logical, dest_mode::physical, {dest_mode::logical, dest_mode::physical});
  field(
      0x8, 0, [](irte& e, bool v) { e.set_redirection_hint(v); }, [](const irte& e) { return e.redirection_hint(); },
      true, false, {true, false});
  field(
      0x10, 0, [](irte& e, trigger_mode v) { e.set_trigger_mode(v); }, [](const irte& e) { return e.trigger_mode(); },
      trigger_mode::level, trigger_mode::edge, {trigger_mode::level, trigger_mode::edge});
  field(
      0xE0, 0, [](irte& e, delivery_mode v) { e.set_delivery_mode(v); },
      [](const irte& e) { return e.delivery_mode(); }, delivery_mode::ext_int, delivery_mode::fixed,
      {delivery_mode::lowest_priority, delivery_mode::smi, delivery_mode::nmi, delivery_mode::init});
  field(
      0xFFFF'FFFF'0000'0000u, 0, [](irte& e, std::uint32_t v) { e.set_dst(v); }, [](const irte& e) { return e.dst(); },
      0xFFFF'FFFFu, 0u, {0x300u, 0x12345678u, 0x80000001u});
}

TEST_CASE("IRTE posted fields: each owns exactly its bits") {
  field(
      0x4000, 0, [](irte& e, bool v) { e.set_urgent(v); }, [](const irte& e) { return e.urgent(); }, true, false,
      {true, false});
  // PDA low (address 31:6) at 63:38 and PDA high (address 63:32) at 127:96.
  field(
      0xFFFF'FFC0'0000'0000u, 0xFFFF'FFFF'0000'0000u, [](irte& e, hpa v) { e.set_pda(v); },
      [](const irte& e) { return e.pda(); }, hpa{0xFFFF'FFFF'FFFF'FFC0u}, hpa{0},
      {hpa{0x1234'5678'9abc'dec0u}, hpa{0x40}, hpa{0x8000'0000'0000'0000u}, hpa{0xFFFF'FFC0u}});
}

TEST_CASE("IRTE remapped: the entry Linux prepare_irte() + set_irte_sid() builds") {
  // vector 0x30 to xAPIC 3, physical, fixed, edge, RH=1; SVT verify SID/SQ, SQ all 16, SID 00:02.0.
  const irte e = make_remapped({.vec = vector{0x30},
                                .destination = apic_id{3},
                                .mode = apic_mode::xapic,
                                .sid = bdf{0, 0, 2, 0}.source_id(),
                                .redirection_hint = true});
  CHECK(e.lo() == 0x0000'0300'0030'0009u);
  CHECK(e.hi() == 0x0000'0000'0004'0010u);
  CHECK(e.dst() == 0x300u);             // xAPIC: APIC ID << 8 ...
  CHECK(((e.lo() >> 40) & 0xFF) == 3);  // ... i.e. bits 47:40
  CHECK(e.destination(apic_mode::xapic) == apic_id{3});
  CHECK_FALSE(e.is_posted());
  CHECK_FALSE(e.reserved_bits_set(apic_mode::xapic));

  irte x2 = e;
  x2.set_destination(apic_id{0x12345678}, apic_mode::x2apic);
  CHECK((x2.lo() >> 32) == 0x12345678u);
  CHECK(x2.destination(apic_mode::x2apic) == apic_id{0x12345678});
  CHECK(x2.reserved_bits_set(apic_mode::xapic));  // not an xAPIC destination
  CHECK_FALSE(x2.reserved_bits_set(apic_mode::x2apic));

  CHECK(encode_destination(apic_id{0x1FF}, apic_mode::xapic) == 0xFF00u);  // truncated to 8 bits
  CHECK_FALSE(destination_fits(apic_id{0x100}, apic_mode::xapic));
  CHECK(destination_fits(apic_id{0x100}, apic_mode::x2apic));
}

TEST_CASE("IRTE posted: PDA split as Linux intel_ir_set_vcpu_affinity() does") {
  const std::uint64_t pid = 0x1234'5678'9abc'dec0u;
  const irte e = make_posted({.vec = vector{0x41}, .descriptor = hpa{pid}, .sid = 0x0010});
  const std::uint64_t pda_l = (pid >> (32 - 26)) & ((std::uint64_t{1} << 26) - 1);
  const std::uint64_t pda_h = (pid >> 32) & 0xFFFF'FFFFu;
  CHECK(e.pda_low() == pda_l);
  CHECK(e.pda_high() == pda_h);
  CHECK((e.lo() >> 38) == pda_l);
  CHECK((e.hi() >> 32) == pda_h);
  CHECK(e.lo() == 0x9abc'dec0'0041'8001u);  // P, IM, VV 0x41, PDA[31:6]
  CHECK(e.hi() == 0x1234'5678'0004'0010u);  // SID, SVT 1, PDA[63:32]
  CHECK(e.pda() == hpa{pid});
  CHECK(e.is_posted());
  CHECK_FALSE(e.urgent());
  CHECK_FALSE(e.reserved_bits_set());

  irte unaligned = e;
  unaligned.set_pda(hpa{pid | 0x3F});  // bits 5:0 are not stored
  CHECK(unaligned == e);
}

TEST_CASE("copy_shared_fields copies exactly P, FPD, AVAIL, IM, vector, SID, SQ, SVT") {
  const irte remapped = make_remapped({.vec = vector{0x55},
                                       .destination = apic_id{7},
                                       .sid = 0xBEEF,
                                       .sq = source_qualifier::ignore_2,
                                       .svt = source_validation::bus,
                                       .delivery = delivery_mode::lowest_priority,
                                       .dest = dest_mode::logical,
                                       .trigger = trigger_mode::level,
                                       .redirection_hint = true,
                                       .fpd = true,
                                       .avail = 0x9});
  const irte posted = irte::from_words(0xFFFF'FFFF'FFFF'FFFFu & ~std::uint64_t{1}, 0x0123'4567'89AB'CDEFu);
  irte out = posted;
  copy_shared_fields(out, remapped);
  const std::uint64_t shared_lo = 0x1 | 0x2 | 0xF00 | 0x8000 | 0xFF0000;
  const std::uint64_t shared_hi = 0xFFFFF;
  CHECK((out.lo() & shared_lo) == (remapped.lo() & shared_lo));
  CHECK((out.hi() & shared_hi) == (remapped.hi() & shared_hi));
  CHECK((out.lo() & ~shared_lo) == (posted.lo() & ~shared_lo));
  CHECK((out.hi() & ~shared_hi) == (posted.hi() & ~shared_hi));

  // The Linux sequence: zeroed entry, copy shared, then the posted fields. Same as make_posted.
  irte pi;
  copy_shared_fields(pi, remapped);
  pi.set_posted(true);
  pi.set_urgent(false);
  pi.set_vector(vector{0x66});
  pi.set_pda(hpa{0x7654'3210'0000'0040u});
  CHECK(pi == make_posted({.vec = vector{0x66},
                           .descriptor = hpa{0x7654'3210'0000'0040u},
                           .sid = 0xBEEF,
                           .sq = source_qualifier::ignore_2,
                           .svt = source_validation::bus,
                           .fpd = true,
                           .avail = 0x9}));
}

TEST_CASE("IRTE reserved bits, bit by bit, per format") {
  // Hand-written reserved masks (VT-d 9.10 / 9.11).
  const std::uint64_t remapped_lo = 0x0000'0000'FF00'7000u;  // 31:24, 14:12
  const std::uint64_t remapped_hi = 0xFFFF'FFFF'FFF0'0000u;  // 127:84
  const std::uint64_t xapic_lo = 0xFFFF'00FF'0000'0000u;     // DST outside 47:40
  const std::uint64_t posted_lo = 0x0000'003F'FF00'30FCu;    // 37:24, 13:12, 7:2
  const std::uint64_t posted_hi = 0x0000'0000'FFF0'0000u;    // 95:84
  CHECK(irte::layout::remapped_reserved_lo == remapped_lo);
  CHECK(irte::layout::remapped_reserved_hi == remapped_hi);
  CHECK(irte::layout::xapic_dst_reserved_lo == xapic_lo);
  CHECK(irte::layout::posted_reserved_lo == posted_lo);
  CHECK(irte::layout::posted_reserved_hi == posted_hi);

  struct fmt {
    irte base;
    apic_mode mode;
    std::uint64_t lo, hi;
  };
  const fmt formats[] = {
      {make_remapped({.vec = vector{0x30}, .destination = apic_id{3}, .mode = apic_mode::x2apic}), apic_mode::x2apic,
       remapped_lo, remapped_hi},
      {make_remapped({.vec = vector{0x30}, .destination = apic_id{3}, .mode = apic_mode::xapic}), apic_mode::xapic,
       remapped_lo | xapic_lo, remapped_hi},
      {make_posted({.vec = vector{0x30}, .descriptor = hpa{0x1000}}), apic_mode::x2apic, posted_lo, posted_hi},
  };
  for (const auto& f : formats) {
    REQUIRE_FALSE(f.base.reserved_bits_set(f.mode));
    for (unsigned b = 0; b < 128; ++b) {
      if (b == 15) continue;  // IM selects the format
      const std::uint64_t lo_bit = b < 64 ? std::uint64_t{1} << b : 0;
      const std::uint64_t hi_bit = b >= 64 ? std::uint64_t{1} << (b - 64) : 0;
      const irte e = irte::from_words(f.base.lo() ^ lo_bit, f.base.hi() ^ hi_bit);
      const bool reserved = (f.lo & lo_bit) != 0 || (f.hi & hi_bit) != 0;
      CAPTURE(b);
      CHECK(e.reserved_bits_set(f.mode) == reserved);
    }
  }
}

TEST_CASE("IRTA register: base, EIME, size") {
  const irta_reg r = irta_reg::make(hpa{0x1234'5000}, apic_mode::x2apic, irta_reg::max_size_field);
  CHECK(r.raw() == 0x1234'580Fu);  // Linux: addr | IR_X2APIC_MODE(1) | INTR_REMAP_TABLE_REG_SIZE
  CHECK(r.base() == hpa{0x1234'5000});
  CHECK(r.mode() == apic_mode::x2apic);
  CHECK(r.entries() == ir_table_max_entries);
  CHECK(r.entries() * irte_bytes == ir_table_max_bytes);
  CHECK_FALSE(r.reserved_bits_set());

  const irta_reg small = irta_reg::make(hpa{0xF'FFFF'F000u}, apic_mode::xapic, 0);
  CHECK(small.raw() == 0xF'FFFF'F000u);
  CHECK(small.entries() == 2);
  CHECK(small.mode() == apic_mode::xapic);
  CHECK(irta_reg::make(hpa{0}, apic_mode::xapic, 7).entries() == 256);
  CHECK(irta_reg::make(hpa{0x2000u | 0xFFF}, apic_mode::xapic, 0).base() == hpa{0x2000});  // low bits dropped
  for (unsigned b = 0; b < 64; ++b) {
    CAPTURE(b);
    CHECK(irta_reg::from_raw(std::uint64_t{1} << b).reserved_bits_set() == (b >= 4 && b <= 10));
  }
  static_assert(irta_register_offset == 0xB8);
}

TEST_CASE("IRTE in shared memory: store and load, single thread") {
  alignas(16) std::uint64_t slot[2] = {0, 0};
  CHECK(irte_load(slot) == irte{});
  const irte a = make_posted({.vec = vector{0x41}, .descriptor = hpa{0x1234'5678'9abc'dec0u}, .sid = 0x10});
  irte_store(slot, a);
  CHECK(slot[0] == a.lo());
  CHECK(slot[1] == a.hi());
  CHECK(irte_load(slot) == a);

  const irte b = make_remapped({.vec = vector{0x30}, .destination = apic_id{3}});
  CHECK(irte_store_atomic(slot, b) == a);
  CHECK(irte_load(slot) == b);

  irte expected = a;  // stale
  CHECK_FALSE(irte_compare_exchange(slot, expected, a));
  CHECK(expected == b);  // told what is there
  CHECK(irte_compare_exchange(slot, expected, a));
  CHECK(irte_load(slot) == a);
}
