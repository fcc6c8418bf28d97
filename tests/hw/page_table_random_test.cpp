// Random map/unmap/translate against a std::map model of 4 KiB pages.
#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include <keepalive/hw/page_table.hpp>

using namespace keepalive;
using namespace keepalive::hw;

namespace {
constexpr std::uint64_t page = 4096;
constexpr std::uint64_t big = 2u << 20;
constexpr std::uint64_t pages_per_big = big / page;

struct model_page {
  std::uint64_t target;
  perm perms;
  bool superpage;
};

// Which small pages are mapped, and where. A 2 MiB superpage is 512 entries flagged superpage.
class model {
 public:
  [[nodiscard]] bool any_in(std::uint64_t start, std::uint64_t end) const {
    auto it = pages_.lower_bound(start / page);
    return it != pages_.end() && it->first < end / page;
  }
  [[nodiscard]] const model_page* find(std::uint64_t va) const {
    auto it = pages_.find(va / page);
    return it == pages_.end() ? nullptr : &it->second;
  }
  void map(std::uint64_t va, std::uint64_t pa, std::uint64_t size, perm p, bool superpage) {
    for (std::uint64_t off = 0; off < size; off += page) pages_[(va + off) / page] = {pa + off, p, superpage};
  }
  // bytes unmapped, or nullopt if the range splits a superpage.
  [[nodiscard]] std::optional<std::uint64_t> unmap(std::uint64_t start, std::uint64_t end) {
    for (std::uint64_t edge : {start, end}) {
      if (edge % big == 0) continue;
      const model_page* inside = find(edge);  // the page at the edge: inside the range at start, outside at end
      const model_page* before = edge >= page ? find(edge - page) : nullptr;
      if ((inside && inside->superpage) && (before && before->superpage)) return std::nullopt;
    }
    std::uint64_t bytes = 0;
    for (auto it = pages_.lower_bound(start / page); it != pages_.end() && it->first < end / page;) {
      it = pages_.erase(it);
      bytes += page;
    }
    return bytes;
  }
  [[nodiscard]] std::size_t size() const { return pages_.size(); }

 private:
  std::map<std::uint64_t, model_page> pages_;
};
}  // namespace

TEST_CASE("random map/unmap/translate agree with a std::map model (3, 4, 5 levels)") {
  for (unsigned levels : {3u, 4u, 5u}) {
    CAPTURE(levels);
    std::mt19937_64 rng{0xC0FFEE + levels};
    auto uniform = [&](std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>{0, n - 1}(rng); };
    buffer_phys_memory mem{2048};
    const hpa root = *mem.alloc_page();
    model m;
    std::set<std::uint64_t> small_tables;  // 2 MiB regions that got a level-1 table (no superpage there after)

    // Four 1 GiB-aligned regions spread over the input width; 256 MiB used in each.
    const std::uint64_t gigs = std::uint64_t{1} << (input_width(levels) - 30);
    std::uint64_t region[4];
    for (auto& r : region) r = uniform(gigs) << 30;
    auto random_va = [&] { return region[uniform(4)] + uniform(256u << 20 >> 12) * page; };
    std::vector<std::uint64_t> mapped_vas;  // translate these half the time
    auto random_perm = [&] { return static_cast<perm>(1 + uniform(3)); };

    long maps = 0, busy = 0, unmaps = 0, split = 0, translations = 0;
    for (int op = 0; op < 4000; ++op) {
      const std::uint64_t dice = uniform(100);
      if (dice < 60) {  // one 4 KiB page
        const std::uint64_t va = random_va();
        const std::uint64_t pa = uniform(std::uint64_t{1} << 40) * page;
        const perm p = random_perm();
        const status s = map(mem, root, levels, iova{va}, hpa{pa}, page, p, true);
        if (m.find(va)) {
          CHECK(s.code() == errc::busy);
          ++busy;
        } else {
          REQUIRE(s);
          m.map(va, pa, page, p, false);
          small_tables.insert(va / big);
          mapped_vas.push_back(va);
          ++maps;
        }
      } else if (dice < 64) {  // an aligned 2 MiB range
        const std::uint64_t va = random_va() / big * big;
        const std::uint64_t pa = uniform(std::uint64_t{1} << 31) * big;
        const perm p = random_perm();
        const status s = map(mem, root, levels, iova{va}, hpa{pa}, big, p, true);
        if (m.any_in(va, va + big)) {
          CHECK(s.code() == errc::busy);
          ++busy;
        } else {
          REQUIRE(s);
          const bool superpage = !small_tables.contains(va / big);  // a table there forces small pages
          m.map(va, pa, big, p, superpage);
          if (!superpage) small_tables.insert(va / big);
          mapped_vas.push_back(va + uniform(pages_per_big) * page);
          ++maps;
        }
      } else if (dice < 80) {  // unmap a random range
        const std::uint64_t va = random_va();
        const std::uint64_t len = (1 + uniform(1024)) * page;
        const auto got = unmap(mem, root, levels, iova{va}, len);
        const auto want = m.unmap(va, va + len);
        if (want) {
          REQUIRE(got);
          CHECK(*got == *want);
          ++unmaps;
        } else {
          CHECK(got.code() == errc::invalid);
          ++split;
        }
      } else {  // translate
        const bool known = !mapped_vas.empty() && uniform(2) == 0;
        const std::uint64_t va = (known ? mapped_vas[uniform(mapped_vas.size())] : random_va()) + uniform(page);
        const dma_access a = uniform(2) == 0 ? dma_access::read : dma_access::write;
        const auto t = translate(mem, root, levels, iova{va}, a);
        const model_page* mp = m.find(va);
        if (!mp) {
          REQUIRE_FALSE(t);
          CHECK(t.fault().reason == fault_reason::not_present);
        } else if (!permits(mp->perms, a)) {
          REQUIRE_FALSE(t);
          CHECK(t.fault() ==
                dma_fault{a == dma_access::read ? fault_reason::read_not_allowed : fault_reason::write_to_readonly,
                          mp->superpage ? 2u : 1u});
        } else {
          REQUIRE(t);
          CHECK(t->address == hpa{mp->target + va % page});
          CHECK(t->page_size == (mp->superpage ? big : page));
          CHECK(t->perms == mp->perms);
        }
        ++translations;
      }
    }
    MESSAGE("maps " << maps << ", busy " << busy << ", unmaps " << unmaps << ", split refused " << split
                    << ", translations " << translations << ", mapped pages " << m.size());

    // Every leaf agrees with the model, and together they cover exactly the model.
    std::uint64_t covered = 0;
    bool agree = true;
    for_each_leaf(mem, root, levels, [&](const mapped_leaf& l) {
      covered += l.size / page;
      for (std::uint64_t off = 0; off < l.size; off += page) {
        const model_page* mp = m.find(l.start.value() + off);
        agree = agree && mp && mp->target == l.target.value() + off && mp->perms == l.perms &&
                mp->superpage == (l.size == big);
      }
    });
    CHECK(agree);
    CHECK(covered == m.size());
    CHECK(m.size() > 1000);
  }
}
