#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

#include <keepalive/hw/page_table.hpp>

#include "field_check.hpp"

using namespace keepalive;
using namespace keepalive::hw;
using hwtest::check_field;
using hwtest::words;

// Counts every operator new in this test binary (the no-allocation test reads it).
// GCC 12 at -O2 flags the replaced pair (new -> malloc, delete -> free) as
// mismatched once std::string's destructor is inlined: a false positive for
// replaceable allocation functions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
std::atomic<long> g_news{0};
}
void* operator new(std::size_t n) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc{};
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

static_assert(sizeof(sl_pte) == 8);
static_assert(pt_entries * pte_bytes == page_bytes);
static_assert(level_size(1) == 4096 && level_size(2) == 2u << 20 && level_size(3) == 1u << 30);
static_assert(input_width(3) == 39 && input_width(4) == 48 && input_width(5) == 57);
static_assert(level_index(0x0000'7FFF'FFFF'F000u, 1) == 511 && level_index(0x0000'0000'0020'0000u, 2) == 1);
static_assert(phys_memory<buffer_phys_memory>);

namespace {
constexpr std::uint64_t KiB4 = 4096;
constexpr std::uint64_t MiB2 = 2u << 20;
constexpr std::uint64_t GiB1 = 1u << 30;

long count_leaves(const buffer_phys_memory& mem, hpa root, unsigned levels) {
  long n = 0;
  for_each_leaf(mem, root, levels, [&](const mapped_leaf&) { ++n; });
  return n;
}
}  // namespace

TEST_CASE("second-level PTE: each field owns exactly its bits, Linux encodings") {
  const auto from = [](const words<1>& w) { return sl_pte::from_raw(w[0]); };
  const auto to = [](const sl_pte& e) { return words<1>{e.raw()}; };
  check_field<1>(
      {0x1}, from, to, [](sl_pte& e, bool v) { e.set_read(v); }, [](const sl_pte& e) { return e.read(); }, true, false,
      {true, false});
  check_field<1>(
      {0x2}, from, to, [](sl_pte& e, bool v) { e.set_write(v); }, [](const sl_pte& e) { return e.write(); }, true,
      false, {true, false});
  check_field<1>(
      {0x3}, from, to, [](sl_pte& e, perm v) { e.set_perms(v); }, [](const sl_pte& e) { return e.perms(); },
      perm::read_write, perm::none, {perm::read, perm::write});
  check_field<1>(
      {0x80}, from, to, [](sl_pte& e, bool v) { e.set_superpage(v); }, [](const sl_pte& e) { return e.superpage(); },
      true, false, {true, false});
  check_field<1>(
      {0x800}, from, to, [](sl_pte& e, bool v) { e.set_snoop(v); }, [](const sl_pte& e) { return e.snoop(); }, true,
      false, {true, false});
  check_field<1>(
      {0x000F'FFFF'FFFF'F000u}, from, to, [](sl_pte& e, hpa v) { e.set_address(v); },
      [](const sl_pte& e) { return e.address(); }, hpa{0x000F'FFFF'FFFF'F000u}, hpa{0},
      {hpa{0x1234'5000}, hpa{0x8'0000'0000u}});

  // DMA_PTE_READ | DMA_PTE_WRITE to 0x12345000; a 2 MiB superpage adds DMA_PTE_LARGE_PAGE.
  CHECK(sl_pte::leaf(hpa{0x1234'5000}, perm::read_write, false).raw() == 0x1234'5003u);
  CHECK(sl_pte::leaf(hpa{0x4020'0000}, perm::read, true).raw() == 0x4020'0081u);
  CHECK(sl_pte::table(hpa{0x7000}).raw() == 0x7003u);
  CHECK(sl_pte::from_raw(0x2).present());  // write-only is present
  CHECK_FALSE(sl_pte::from_raw(0xFFFF'FFFF'FFFF'FFFCu).present());

  // Reserved: PS above level 3; a superpage's address bits below its size.
  CHECK(sl_pte::leaf(hpa{0}, perm::read, true).reserved_bits_set(4));
  CHECK(sl_pte::leaf(hpa{0x4000'1000}, perm::read, true).reserved_bits_set(2));
  CHECK_FALSE(sl_pte::leaf(hpa{0x4020'0000}, perm::read, true).reserved_bits_set(2));
  CHECK(sl_pte::leaf(hpa{0x4020'0000}, perm::read, true).reserved_bits_set(3));
  CHECK_FALSE(sl_pte::leaf(hpa{0x4000'0000}, perm::read, true).reserved_bits_set(3));
  CHECK_FALSE(sl_pte::leaf(hpa{0x4000'1000}, perm::read, true).reserved_bits_set(1));
}

TEST_CASE("map and translate 4 KiB, 2 MiB and 1 GiB pages at 3, 4 and 5 levels") {
  for (unsigned levels : {3u, 4u, 5u}) {
    CAPTURE(levels);
    buffer_phys_memory mem{64};
    const hpa root = *mem.alloc_page();
    const std::uint64_t high = levels == 3 ? 0 : std::uint64_t{1} << (input_width(levels) - 1);  // top half

    // 4 KiB.
    const iova va4{high + 0x1234'5000};
    REQUIRE(map(mem, root, levels, va4, hpa{0x8'7654'3000u}, KiB4, perm::read_write, true));
    auto t = translate(mem, root, levels, va4 + 0xABC, dma_access::write);
    REQUIRE(t);
    CHECK(t->address == hpa{0x8'7654'3ABCu});
    CHECK(t->page_size == KiB4);
    CHECK(t->level == 1);
    CHECK(t->perms == perm::read_write);

    // 2 MiB.
    const iova va2{high + 0x4060'0000};
    REQUIRE(map(mem, root, levels, va2, hpa{0x2'0040'0000u}, MiB2, perm::read, true));
    t = translate(mem, root, levels, va2 + 0x1F'FFFF, dma_access::read);
    REQUIRE(t);
    CHECK(t->address == hpa{0x2'005F'FFFFu});
    CHECK(t->page_size == MiB2);
    CHECK(t->level == 2);
    CHECK(t->perms == perm::read);

    // 1 GiB.
    const iova va1{high + 0x40'0000'0000u};
    REQUIRE(map(mem, root, levels, va1, hpa{0x3'4000'0000u}, GiB1, perm::write, true));
    t = translate(mem, root, levels, va1 + 0x3FFF'FFF8, dma_access::write);
    REQUIRE(t);
    CHECK(t->address == hpa{0x3'7FFF'FFF8u});
    CHECK(t->page_size == GiB1);
    CHECK(t->level == 3);

    CHECK(count_leaves(mem, root, levels) == 3);
    std::vector<mapped_leaf> leaves;
    for_each_leaf(mem, root, levels, [&](const mapped_leaf& l) { leaves.push_back(l); });
    REQUIRE(leaves.size() == 3);
    CHECK(leaves[0] == mapped_leaf{va4, hpa{0x8'7654'3000u}, KiB4, perm::read_write, 1, false});
    CHECK(leaves[1] == mapped_leaf{va2, hpa{0x2'0040'0000u}, MiB2, perm::read, 2, false});
    CHECK(leaves[2] == mapped_leaf{va1, hpa{0x3'4000'0000u}, GiB1, perm::write, 3, false});

    // The entries are where the spec puts them: walk by hand.
    hpa table = root;
    for (unsigned l = levels; l > 1; --l) {
      const sl_pte e = sl_pte::from_raw(mem.load64(table + level_index(va4.value(), l) * 8));
      REQUIRE(e.present());
      CHECK_FALSE(e.superpage());
      table = e.address();
    }
    CHECK(mem.load64(table + level_index(va4.value(), 1) * 8) == 0x8'7654'3003u);
  }
}

TEST_CASE("faults: reason and level") {
  for (unsigned levels : {3u, 4u, 5u}) {
    CAPTURE(levels);
    buffer_phys_memory mem{64};
    const hpa root = *mem.alloc_page();
    auto fault_of = [&](std::uint64_t va, dma_access a) {
      const auto t = translate(mem, root, levels, iova{va}, a);
      REQUIRE_FALSE(t);
      return t.fault();
    };
    CHECK(fault_of(0x1000, dma_access::read) == dma_fault{fault_reason::not_present, levels});

    REQUIRE(map(mem, root, levels, iova{0x4000'1000}, hpa{0x9000}, KiB4, perm::read, true));
    CHECK(fault_of(0x4000'2000, dma_access::read) == dma_fault{fault_reason::not_present, 1});  // same 2 MiB
    CHECK(fault_of(0x4020'0000, dma_access::read) == dma_fault{fault_reason::not_present, 2});  // same 1 GiB
    CHECK(fault_of(0x8000'0000, dma_access::read) == dma_fault{fault_reason::not_present, 3});  // other 1 GiB
    CHECK(fault_of(0x4000'1000, dma_access::write) == dma_fault{fault_reason::write_to_readonly, 1});

    REQUIRE(map(mem, root, levels, iova{0x4040'0000}, hpa{0x20'0000}, MiB2, perm::write, true));
    CHECK(fault_of(0x4040'0000, dma_access::read) == dma_fault{fault_reason::read_not_allowed, 2});
    CHECK(translate(mem, root, levels, iova{0x4040'0000}, dma_access::write));

    const std::uint64_t beyond = std::uint64_t{1} << input_width(levels);
    CHECK(fault_of(beyond, dma_access::read) == dma_fault{fault_reason::address_beyond_width, levels});
    CHECK(fault_of(~std::uint64_t{0xFFF}, dma_access::read) == dma_fault{fault_reason::address_beyond_width, levels});
    CHECK_FALSE(map(mem, root, levels, iova{beyond - KiB4}, hpa{0}, 2 * KiB4, perm::read, false));
    CHECK(map(mem, root, levels, iova{beyond - KiB4}, hpa{0}, KiB4, perm::read, false));

    // A non-leaf entry without W denies writes below it, reported at its level.
    const hpa l2 = [&] {
      hpa t = root;
      for (unsigned l = levels; l > 2; --l)
        t = sl_pte::from_raw(mem.load64(t + level_index(0x4000'1000, l) * 8)).address();
      return t;
    }();
    const hpa slot = l2 + level_index(0x4000'1000, 2) * 8;
    const std::uint64_t saved = mem.load64(slot);
    mem.store64(slot, saved & ~std::uint64_t{2});
    REQUIRE(map(mem, root, levels, iova{0x4000'3000}, hpa{0xA000}, KiB4, perm::read_write, false));
    CHECK(fault_of(0x4000'3000, dma_access::write) == dma_fault{fault_reason::write_to_readonly, 2});
    CHECK(translate(mem, root, levels, iova{0x4000'3000}, dma_access::read)->perms == perm::read);
    mem.store64(slot, saved);

    // Reserved bits: a 2 MiB superpage whose address is not 2 MiB aligned.
    REQUIRE(map(mem, root, levels, iova{0x4080'0000}, hpa{0x40'0000}, MiB2, perm::read, true));
    const hpa sp = l2 + level_index(0x4080'0000, 2) * 8;
    mem.store64(sp, mem.load64(sp) | 0x1000);
    CHECK(fault_of(0x4080'0000, dma_access::read) == dma_fault{fault_reason::reserved_bits_set, 2});
  }
  // PS at the top of a 4-level table: no 512 GiB pages.
  buffer_phys_memory mem{4};
  const hpa root = *mem.alloc_page();
  CHECK(translate(mem, root, 6, iova{0}, dma_access::read).fault() == dma_fault{fault_reason::unsupported_levels, 6});
  mem.store64(root, sl_pte::leaf(hpa{0}, perm::read, true).raw());
  CHECK(translate(mem, root, 4, iova{0}, dma_access::read).fault() == dma_fault{fault_reason::reserved_bits_set, 4});
}

TEST_CASE("superpages only when both addresses are aligned, the range covers them and it is allowed") {
  buffer_phys_memory mem{64};
  const hpa root = *mem.alloc_page();
  auto page_size_at = [&](std::uint64_t va) { return translate(mem, root, 4, iova{va}, dma_access::read)->page_size; };

  // hpa only 4 KiB aligned: 512 small pages.
  REQUIRE(map(mem, root, 4, iova{0x20'0000}, hpa{0x1000}, MiB2, perm::read, true));
  CHECK(page_size_at(0x20'0000) == KiB4);
  CHECK(count_leaves(mem, root, 4) == 512);
  // Not allowed: 512 small pages.
  REQUIRE(map(mem, root, 4, iova{0x40'0000}, hpa{0x40'0000}, MiB2, perm::read, false));
  CHECK(page_size_at(0x40'0000) == KiB4);
  CHECK(count_leaves(mem, root, 4) == 1024);
  // 2 MiB + 4 KiB: one superpage and one small page.
  REQUIRE(map(mem, root, 4, iova{0x60'0000}, hpa{0x60'0000}, MiB2 + KiB4, perm::read, true));
  CHECK(page_size_at(0x60'0000) == MiB2);
  CHECK(page_size_at(0x80'0000) == KiB4);
  CHECK(count_leaves(mem, root, 4) == 1026);
  // 1 GiB at a 2 MiB-aligned hpa: 512 superpages of 2 MiB.
  REQUIRE(map(mem, root, 4, iova{0x40'0000'0000u}, hpa{0x20'0000}, GiB1, perm::read, true));
  CHECK(page_size_at(0x40'0000'0000u) == MiB2);
  CHECK(count_leaves(mem, root, 4) == 1026 + 512);
  // 4 KiB-offset iova inside a big aligned range: small pages up to the boundary, then big.
  REQUIRE(map(mem, root, 4, iova{0x80'3FFF'F000u}, hpa{0x7FFF'F000u}, GiB1 + KiB4, perm::read, true));
  CHECK(page_size_at(0x80'3FFF'F000u) == KiB4);
  CHECK(page_size_at(0x80'4000'0000u) == GiB1);
  CHECK(translate(mem, root, 4, iova{0x80'4000'0010u}, dma_access::read)->address == hpa{0x8000'0010u});
}

TEST_CASE("map is all-or-nothing, unmap clears leaves, never splits a superpage") {
  buffer_phys_memory mem{64};
  const hpa root = *mem.alloc_page();
  REQUIRE(map(mem, root, 3, iova{0x20'0000}, hpa{0x20'0000}, MiB2, perm::read_write, true));
  REQUIRE(map(mem, root, 3, iova{0x40'2000}, hpa{0x5000}, 4 * KiB4, perm::read_write, true));

  // Overlap: refused, nothing mapped, not even the holes before the overlap.
  const status s = map(mem, root, 3, iova{0x40'0000}, hpa{0x1000}, 3 * KiB4, perm::read, false);
  CHECK(s.code() == errc::busy);
  CHECK_FALSE(translate(mem, root, 3, iova{0x40'0000}, dma_access::read));
  CHECK(count_leaves(mem, root, 3) == 5);
  // Bad arguments.
  CHECK(map(mem, root, 3, iova{0x1001}, hpa{0}, KiB4, perm::read, false).code() == errc::invalid);
  CHECK(map(mem, root, 3, iova{0x1000}, hpa{0x10}, KiB4, perm::read, false).code() == errc::invalid);
  CHECK(map(mem, root, 3, iova{0x1000}, hpa{0}, 100, perm::read, false).code() == errc::invalid);
  CHECK(map(mem, root, 3, iova{0x1000}, hpa{0}, 0, perm::read, false).code() == errc::invalid);
  CHECK(map(mem, root, 3, iova{0x1000}, hpa{0}, KiB4, perm::none, false).code() == errc::invalid);
  CHECK(map(mem, root, 3, iova{0x1000}, hpa{std::uint64_t{1} << 52}, KiB4, perm::read, false).code() == errc::invalid);
  CHECK(map(mem, root, 1, iova{0x1000}, hpa{0}, KiB4, perm::read, false).code() == errc::invalid);

  // Unmapping half a superpage: refused, nothing changed.
  auto u = unmap(mem, root, 3, iova{0x20'0000}, MiB2 / 2);
  CHECK(u.code() == errc::invalid);
  CHECK(count_leaves(mem, root, 3) == 5);
  u = unmap(mem, root, 3, iova{0x1F'F000}, KiB4 + MiB2 / 2);
  CHECK(u.code() == errc::invalid);
  CHECK(count_leaves(mem, root, 3) == 5);

  // Holes are fine; the count is what was mapped.
  u = unmap(mem, root, 3, iova{0}, 0x40'4000);  // the superpage and two small pages
  REQUIRE(u);
  CHECK(*u == MiB2 + 2 * KiB4);
  CHECK(count_leaves(mem, root, 3) == 2);
  CHECK(translate(mem, root, 3, iova{0x40'4000}, dma_access::read)->address == hpa{0x7000});
  CHECK(translate(mem, root, 3, iova{0x20'0000}, dma_access::read).fault() == dma_fault{fault_reason::not_present, 2});
  u = unmap(mem, root, 3, iova{0x40'4000}, 2 * KiB4);
  REQUIRE(u);
  CHECK(*u == 2 * KiB4);
  CHECK(count_leaves(mem, root, 3) == 0);
  u = unmap(mem, root, 3, iova{0x40'4000}, 2 * KiB4);
  REQUIRE(u);
  CHECK(*u == 0);

  // Remapping where a (now empty) table stays: small pages, translation correct.
  REQUIRE(map(mem, root, 3, iova{0x40'0000}, hpa{0x60'0000}, MiB2, perm::read, true));
  CHECK(translate(mem, root, 3, iova{0x40'0000}, dma_access::read)->page_size == KiB4);
  // Where no table exists it is a superpage again.
  REQUIRE(map(mem, root, 3, iova{0x20'0000}, hpa{0x60'0000}, MiB2, perm::read, true));
  CHECK(translate(mem, root, 3, iova{0x20'0000}, dma_access::read)->page_size == MiB2);
}

TEST_CASE("page exhaustion: no_memory, and what was mapped is unmapped again") {
  buffer_phys_memory mem{3};  // root + 2 tables: a 3-level table needs 2 more per 1 GiB region
  const hpa root = *mem.alloc_page();
  REQUIRE(map(mem, root, 3, iova{0}, hpa{0}, KiB4, perm::read, false));
  CHECK(mem.pages_in_use() == 3);
  const status s = map(mem, root, 3, iova{0x1000}, hpa{0x1000}, 2 * MiB2, perm::read, false);
  CHECK(s.code() == errc::no_memory);
  CHECK(count_leaves(mem, root, 3) == 1);  // only the first mapping
  CHECK(translate(mem, root, 3, iova{0}, dma_access::read));
}

TEST_CASE("for_each_table and free_tables account for every page") {
  for (unsigned levels : {3u, 4u, 5u}) {
    buffer_phys_memory mem{128};
    const hpa root = *mem.alloc_page();
    REQUIRE(map(mem, root, levels, iova{0}, hpa{0}, 3 * MiB2, perm::read, false));            // 3 leaf tables
    REQUIRE(map(mem, root, levels, iova{0x40'0000'0000u}, hpa{0}, KiB4, perm::read, false));  // another branch
    long tables = 0;
    unsigned last_level = 0;
    for_each_table(mem, root, levels, [&](hpa, unsigned level) {
      ++tables;
      last_level = level;
    });
    CHECK(tables == static_cast<long>(mem.pages_in_use()));
    CHECK(last_level == levels);  // the root comes last
    free_tables(mem, root, levels);
    CHECK(mem.pages_in_use() == 0);
  }
}

TEST_CASE("no heap allocation per map/unmap/translate once tables exist") {
  buffer_phys_memory mem{64};
  const hpa root = *mem.alloc_page();
  REQUIRE(map(mem, root, 4, iova{0}, hpa{0}, MiB2, perm::read, false));
  REQUIRE(unmap(mem, root, 4, iova{0}, MiB2));
  const long before = g_news.load();
  bool ok = true;
  for (std::uint64_t va = 0; va < MiB2; va += KiB4) {
    ok = ok && map(mem, root, 4, iova{va}, hpa{va + 0x1000'0000}, KiB4, perm::read_write, true).has_value();
    ok = ok && translate(mem, root, 4, iova{va}, dma_access::write).has_value();
  }
  ok = ok && unmap(mem, root, 4, iova{0}, MiB2).has_value();
  CHECK(ok);
  CHECK(g_news.load() == before);
}

TEST_CASE("one million 4 KiB mappings, one map call each") {
  constexpr std::uint64_t pages = 1u << 20;
  buffer_phys_memory mem{4096};
  const hpa root = *mem.alloc_page();
  bool ok = true;
  for (std::uint64_t i = 0; i < pages; ++i)
    ok =
        ok && map(mem, root, 4, iova{i * KiB4}, hpa{(pages - 1 - i) * KiB4}, KiB4, perm::read_write, false).has_value();
  CHECK(ok);
  CHECK(count_leaves(mem, root, 4) == static_cast<long>(pages));
  CHECK(mem.pages_in_use() == 1 + 1 + 4 + 2048);
  for (std::uint64_t i : {std::uint64_t{0}, std::uint64_t{12345}, pages - 1})
    CHECK(translate(mem, root, 4, iova{i * KiB4 + 8}, dma_access::read)->address == hpa{(pages - 1 - i) * KiB4 + 8});
  auto u = unmap(mem, root, 4, iova{0}, pages * KiB4);
  REQUIRE(u);
  CHECK(*u == pages * KiB4);
}

TEST_CASE("translate runs concurrently with map/unmap: it sees the old or the new entry") {
  buffer_phys_memory mem{256};
  const hpa root = *mem.alloc_page();
  std::atomic<bool> done{false};
  std::atomic<long> wrong{0};
  std::thread walker([&] {
    for (long n = 0; !done.load() || n < 10000; ++n) {
      const std::uint64_t va = static_cast<std::uint64_t>(n % 512) * KiB4;
      const auto t = translate(mem, root, 4, iova{va + 0x18}, dma_access::read);
      if (t && t->address != hpa{va + 0x4000'0018u}) wrong.fetch_add(1);
      if (!t && t.fault().reason != fault_reason::not_present) wrong.fetch_add(1);
    }
  });
  for (int round = 0; round < 200; ++round) {
    if (!map(mem, root, 4, iova{0}, hpa{0x4000'0000}, MiB2, perm::read, round % 2 == 0)) wrong.fetch_add(1);
    if (!unmap(mem, root, 4, iova{0}, MiB2)) wrong.fetch_add(1);
  }
  done.store(true);
  walker.join();
  CHECK(wrong.load() == 0);
}
