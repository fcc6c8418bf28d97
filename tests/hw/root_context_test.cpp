#include <doctest/doctest.h>

#include <cstdint>

#include <keepalive/hw/page_table.hpp>
#include <keepalive/hw/root_context.hpp>

#include "field_check.hpp"

using namespace keepalive;
using namespace keepalive::hw;
using hwtest::check_field;
using hwtest::words;

static_assert(sizeof(root_entry) == 16 && sizeof(context_entry) == 16);
static_assert(root_entries * root_entry_bytes == 4096 && context_entries * context_entry_bytes == 4096);
static_assert(context_entry::layout::address_width.first_bit() == 64);
static_assert(context_entry::layout::domain_id.first_bit() == 72 && context_entry::layout::domain_id.width == 16);

TEST_CASE("root entry: P and CTP own exactly their bits, known encoding") {
  const auto from = [](const words<2>& w) { return root_entry::from_words(w[0], w[1]); };
  const auto to = [](const root_entry& e) { return e.words(); };
  check_field<2>(
      {0x1, 0}, from, to, [](root_entry& e, bool v) { e.set_present(v); },
      [](const root_entry& e) { return e.present(); }, true, false, {true, false});
  check_field<2>(
      {0xFFFF'FFFF'FFFF'F000u, 0}, from, to, [](root_entry& e, hpa v) { e.set_context_table(v); },
      [](const root_entry& e) { return e.context_table(); }, hpa{0xFFFF'FFFF'FFFF'F000u}, hpa{0},
      {hpa{0x1234'5000}, hpa{0x000F'FFFF'FFFF'F000u}});
  const root_entry r = root_entry::make(hpa{0x1234'5000});
  CHECK(r.lo() == 0x1234'5001u);
  CHECK(r.hi() == 0);

  // Reserved: 11:1, bits at or above HAW, all of hi (QEMU VTD_ROOT_ENTRY_RSVD = 0xffe | ~HAW).
  for (unsigned b = 1; b < 128; ++b) {
    const root_entry e = root_entry::from_words(r.lo() ^ (b < 64 ? std::uint64_t{1} << b : 0),
                                                r.hi() ^ (b >= 64 ? std::uint64_t{1} << (b - 64) : 0));
    CAPTURE(b);
    CHECK(e.reserved_bits_set(48) == (b <= 11 || b >= 48));
    CHECK(e.reserved_bits_set() == (b <= 11 || b >= 52));
  }
}

TEST_CASE("context entry: every field owns exactly its bits") {
  const auto from = [](const words<2>& w) { return context_entry::from_words(w[0], w[1]); };
  const auto to = [](const context_entry& e) { return e.words(); };
  using ce = context_entry;
  check_field<2>(
      {0x1, 0}, from, to, [](ce& e, bool v) { e.set_present(v); }, [](const ce& e) { return e.present(); }, true, false,
      {true, false});
  check_field<2>(
      {0x2, 0}, from, to, [](ce& e, bool v) { e.set_fpd(v); }, [](const ce& e) { return e.fpd(); }, true, false,
      {true, false});
  check_field<2>(
      {0xC, 0}, from, to, [](ce& e, translation_type v) { e.set_translation_type(v); },
      [](const ce& e) { return e.translation_type(); }, translation_type::reserved, translation_type::multi_level,
      {translation_type::dev_iotlb, translation_type::pass_through});
  check_field<2>(
      {0xFFFF'FFFF'FFFF'F000u, 0}, from, to, [](ce& e, hpa v) { e.set_slptptr(v); },
      [](const ce& e) { return e.slptptr(); }, hpa{0xFFFF'FFFF'FFFF'F000u}, hpa{0},
      {hpa{0xABCD'E000}, hpa{0x8'0000'0000u}});
  check_field<2>(
      {0, 0x7}, from, to, [](ce& e, std::uint8_t v) { e.set_address_width(v); },
      [](const ce& e) { return e.address_width(); }, std::uint8_t{7}, std::uint8_t{0},
      {std::uint8_t{1}, std::uint8_t{2}, std::uint8_t{3}});
  check_field<2>(
      {0, 0x78}, from, to, [](ce& e, std::uint8_t v) { e.set_avail(v); }, [](const ce& e) { return e.avail(); },
      std::uint8_t{0xF}, std::uint8_t{0}, {std::uint8_t{0x5}, std::uint8_t{0xA}});
  check_field<2>(
      {0, 0xFF'FF00}, from, to, [](ce& e, domain_id v) { e.set_domain_id(v); },
      [](const ce& e) { return e.domain_id(); }, domain_id{0xFFFF}, domain_id{0},
      {domain_id{1}, domain_id{0x42}, domain_id{0x8001}});
}

TEST_CASE("context entry: known encoding, AW <-> levels, reserved bits") {
  const context_entry c = context_entry::make(hpa{0xABCD'E000}, 4, domain_id{0x42});
  CHECK(c.lo() == 0xABCD'E001u);            // P, TT multi-level
  CHECK(c.hi() == 0x4202u);                 // AW 2 (48-bit), DID 0x42 at 87:72
  CHECK(((c.hi() >> 8) & 0xFFFF) == 0x42);  // Linux context_domain_id()
  CHECK(c.levels() == 4);
  CHECK(levels_for_aw(1) == 3);
  CHECK(levels_for_aw(3) == 5);
  CHECK(aw_for_levels(3) == 1);
  CHECK(address_width_for_aw(0) == 30);
  CHECK(address_width_for_aw(1) == 39);
  CHECK(address_width_for_aw(2) == 48);
  CHECK(address_width_for_aw(3) == 57);
  for (std::uint8_t aw = 0; aw <= max_aw; ++aw) CHECK(input_width(levels_for_aw(aw)) == address_width_for_aw(aw));

  // QEMU: RSVD_LO = 0xff0 | ~HAW, RSVD_HI = 0xffffffffff000080.
  CHECK(context_entry::layout::reserved_hi == 0xFFFF'FFFF'FF00'0080u);
  for (unsigned b = 1; b < 128; ++b) {
    const context_entry e = context_entry::from_words(c.lo() ^ (b < 64 ? std::uint64_t{1} << b : 0),
                                                      c.hi() ^ (b >= 64 ? std::uint64_t{1} << (b - 64) : 0));
    const bool reserved = (b >= 4 && b <= 11) || (b >= 52 && b < 64) || b == 71 || b >= 88;
    CAPTURE(b);
    CHECK(e.reserved_bits_set() == reserved);
  }
  context_entry bad = c;
  bad.set_translation_type(translation_type::reserved);
  CHECK(bad.invalid_encoding());
  bad = c;
  bad.set_address_width(4);
  CHECK(bad.invalid_encoding());
  bad.set_translation_type(translation_type::pass_through);  // AW not used
  CHECK_FALSE(bad.invalid_encoding());
  CHECK_FALSE(c.invalid_encoding());
}

TEST_CASE("resolve_context: bus -> root entry -> devfn -> context entry, and each fault") {
  buffer_phys_memory mem{16, hpa{0x10'0000}};
  const hpa root = *mem.alloc_page();
  const hpa ctx = *mem.alloc_page();
  const hpa slpt = *mem.alloc_page();
  const bdf dev{0, 0x3a, 4, 0};

  auto r = resolve_context(mem, root, dev);
  REQUIRE_FALSE(r);
  CHECK(r.fault() == context_fault::root_not_present);

  write_root_entry(mem, root, dev.bus(), root_entry::make(ctx));
  CHECK(mem.load64(root + 0x3a * 16) == ctx.value() + 1);
  r = resolve_context(mem, root, dev);
  REQUIRE_FALSE(r);
  CHECK(r.fault() == context_fault::context_not_present);

  const context_entry c = context_entry::make(slpt, 3, domain_id{7});
  write_context_entry(mem, ctx, dev.devfn(), c);
  CHECK(mem.load64(ctx + 0x20 * 16) == c.lo());
  CHECK(mem.load64(ctx + 0x20 * 16 + 8) == c.hi());
  r = resolve_context(mem, root, dev);
  REQUIRE(r);
  CHECK(r->entry == c);
  CHECK(r->entry_address == ctx + 0x20 * 16);
  CHECK(r->entry.slptptr() == slpt);
  CHECK(r->entry.levels() == 3);
  CHECK(r->entry.domain_id() == domain_id{7});
  CHECK(read_context_entry(mem, ctx, dev.devfn()) == c);
  CHECK(read_root_entry(mem, root, dev.bus()) == root_entry::make(ctx));

  CHECK(resolve_context(mem, root, bdf{0, 0x3a, 4, 1}).fault() == context_fault::context_not_present);
  CHECK(resolve_context(mem, root, bdf{0, 0x3b, 4, 0}).fault() == context_fault::root_not_present);

  context_entry bad = c;
  bad.set_translation_type(translation_type::reserved);
  write_context_entry(mem, ctx, dev.devfn(), bad);
  CHECK(resolve_context(mem, root, dev).fault() == context_fault::context_invalid);
  write_context_entry(mem, ctx, dev.devfn(), context_entry::from_words(c.lo() | 0x10, c.hi()));
  CHECK(resolve_context(mem, root, dev).fault() == context_fault::context_reserved_bits);
  write_root_entry(mem, root, dev.bus(), root_entry::from_words(ctx.value() | 1, 1));
  CHECK(resolve_context(mem, root, dev).fault() == context_fault::root_reserved_bits);
}
