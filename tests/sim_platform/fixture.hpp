// Test helpers: tables built by hand in simulated physical memory with the hw builders, as
// the kernel would build them.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <keepalive/hw/hw.hpp>

#include "iommu.hpp"
#include "phys_memory.hpp"

namespace keepalive::sim::test {

// hw::phys_memory over sim::phys_memory: tables come from a bump region.
class table_memory {
 public:
  table_memory(phys_memory& mem, hpa first, hpa limit) : mem_{mem}, next_{first}, limit_{limit} {}
  [[nodiscard]] std::uint64_t load64(hpa a) const noexcept { return mem_.load64(a); }
  void store64(hpa a, std::uint64_t v) noexcept { mem_.store64(a, v); }
  [[nodiscard]] std::optional<hpa> alloc_page() noexcept {
    if (next_.value() + hw::page_bytes > limit_.value()) return std::nullopt;
    const hpa p = next_;
    next_ = next_ + hw::page_bytes;
    std::memset(mem_.base() + p.value(), 0, hw::page_bytes);
    return p;
  }
  void free_page(hpa) noexcept {}

 private:
  phys_memory& mem_;
  hpa next_, limit_;
};
static_assert(hw::phys_memory<table_memory>);

inline phys_memory make_memory(std::uint64_t bytes = 32ull << 20) {
  auto m = phys_memory::create(bytes, "keepalive-test-phys");
  REQUIRE(m);
  return std::move(*m);
}

// Root table + context tables + one second-level table per device (one domain each).
class translation_tables {
 public:
  static constexpr hpa table_area{1ull << 20};
  static constexpr hpa table_limit{4ull << 20};

  explicit translation_tables(phys_memory& mem) : mem_{mem}, tm_{mem, table_area, table_limit} {
    root_ = *tm_.alloc_page();
  }
  [[nodiscard]] hpa root() const noexcept { return root_; }
  [[nodiscard]] table_memory& memory() noexcept { return tm_; }

  // Present root entry for the bus (a new context table if needed) and a context entry for
  // the device pointing at a new second-level table of `levels` levels.
  hpa attach(bdf dev, unsigned levels = 4, hw::translation_type tt = hw::translation_type::multi_level) {
    auto re = hw::read_root_entry(tm_, root_, dev.bus());
    if (!re.present()) {
      re = hw::root_entry::make(*tm_.alloc_page());
      hw::write_root_entry(tm_, root_, dev.bus(), re);
    }
    const hpa sl = *tm_.alloc_page();
    hw::write_context_entry(
        tm_, re.context_table(), dev.devfn(),
        hw::context_entry::make(sl, levels, domain_id{static_cast<std::uint16_t>(dev.devfn() + 1)}, tt));
    slpt_.emplace_back(dev, std::pair{sl, levels});
    return sl;
  }
  [[nodiscard]] std::pair<hpa, unsigned> second_level(bdf dev) const {
    for (const auto& [d, t] : slpt_)
      if (d == dev) return t;
    FAIL("device not attached");
    return {};
  }
  void map(bdf dev, iova va, hpa pa, std::uint64_t size, hw::perm p, bool superpages = false) {
    const auto [sl, levels] = second_level(dev);
    REQUIRE(hw::map(tm_, sl, levels, va, pa, size, p, superpages));
  }
  void unmap(bdf dev, iova va, std::uint64_t size) {
    const auto [sl, levels] = second_level(dev);
    REQUIRE(hw::unmap(tm_, sl, levels, va, size));
  }
  [[nodiscard]] hw::context_entry context(bdf dev) const {
    const auto re = hw::read_root_entry(tm_, root_, dev.bus());
    return hw::read_context_entry(tm_, re.context_table(), dev.devfn());
  }
  void set_context(bdf dev, const hw::context_entry& ce) {
    const auto re = hw::read_root_entry(tm_, root_, dev.bus());
    hw::write_context_entry(tm_, re.context_table(), dev.devfn(), ce);
  }

 private:
  phys_memory& mem_;
  table_memory tm_;
  hpa root_{};
  std::vector<std::pair<bdf, std::pair<hpa, unsigned>>> slpt_;
};

// An interrupt-remapping table of 2^(s+1) entries at `base`.
class ir_table {
 public:
  ir_table(phys_memory& mem, hpa base, hw::apic_mode mode, std::uint8_t s = 7)
      : mem_{mem}, base_{base}, mode_{mode}, s_{s} {
    std::memset(mem.base() + base.value(), 0, (std::size_t{2} << s) * hw::irte_bytes);
  }
  [[nodiscard]] std::uint64_t irta() const noexcept { return hw::irta_reg::make(base_, mode_, s_).raw(); }
  void set(std::uint32_t index, const hw::irte& e) { hw::irte_store(mem_.word_ptr(base_ + index * hw::irte_bytes), e); }
  [[nodiscard]] hw::irte get(std::uint32_t index) const {
    return hw::irte_load(mem_.word_ptr(base_ + index * hw::irte_bytes));
  }
  [[nodiscard]] hw::apic_mode mode() const noexcept { return mode_; }

 private:
  phys_memory& mem_;
  hpa base_;
  hw::apic_mode mode_;
  std::uint8_t s_;
};

// Interrupts that reached a host CPU.
struct recorded_sink {
  struct delivery {
    apic_id dest;
    vector vec;
    friend bool operator==(const delivery&, const delivery&) = default;
  };
  std::mutex mu;
  std::vector<delivery> got;
  bool accept = true;

  cpu_sink make() {
    return [this](apic_id d, vector v) {
      std::lock_guard lk{mu};
      got.push_back({d, v});
      return accept;
    };
  }
  std::vector<delivery> take() {
    std::lock_guard lk{mu};
    return std::exchange(got, {});
  }
};

inline std::vector<std::byte> pattern(std::size_t n, std::uint8_t seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(seed + i * 13);
  return v;
}

inline bool all_equal(const phys_memory& mem, hpa at, std::size_t n, std::byte value) {
  const std::byte* p = mem.base() + at.value();
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != value) return false;
  return true;
}

}  // namespace keepalive::sim::test
