// Physical memory as the VT-d walkers see it, as a concept, so that the simulated platform
// (a shared-memory file) and tests (a heap buffer) run the same table code.
//
//   readable_phys_memory: load64(hpa) -> uint64_t   atomic 64-bit, acquire; 8-byte aligned hpa
//   phys_memory: also
//     store64(hpa, uint64_t)                        atomic 64-bit, release
//     alloc_page() -> std::optional<hpa>            a zeroed 4 KiB page; nullopt when exhausted
//     free_page(hpa)
//
// Walkers only load, builders store: a table is zeroed before the release store of the entry
// that points at it, so a concurrent walker that sees the pointer sees a zeroed table.
// alloc_page/free_page are called by one builder at a time.
#pragma once

#include <array>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <vector>

#include <keepalive/types.hpp>

namespace keepalive::hw {

inline constexpr std::uint64_t page_bytes = 4096;  // VT-d pages are 4 KiB whatever the host uses
inline constexpr unsigned page_shift = 12;
inline constexpr unsigned max_haw = 52;  // host address width of the simulated platform

template <class M>
concept readable_phys_memory = requires(const M& m, hpa a) {
  { m.load64(a) } -> std::same_as<std::uint64_t>;
};

template <class M>
concept phys_memory = readable_phys_memory<M> && requires(M& m, hpa a, std::uint64_t v) {
  { m.store64(a, v) } -> std::same_as<void>;
  { m.alloc_page() } -> std::same_as<std::optional<hpa>>;
  { m.free_page(a) } -> std::same_as<void>;
};

// 128-bit table entries (root, context) whose bit 0 is P, through a memory provider.
// write_entry128: lo with P cleared, hi, then lo: a present entry never pairs a new lo with an
// old hi. read_entry128: lo, hi, lo again until lo is stable. Caveat: two complete rewrites
// between the reader's loads (A -> B -> A) would pass; root and context entries are rewritten
// rarely (attach/detach), so this is accepted here. IRTEs use irte_load() instead.
template <readable_phys_memory M>
[[nodiscard]] std::array<std::uint64_t, 2> read_entry128(const M& mem, hpa at) {
  for (;;) {
    const std::uint64_t lo = mem.load64(at);
    const std::uint64_t hi = mem.load64(at + 8);
    if (mem.load64(at) == lo) return {lo, hi};
  }
}
template <phys_memory M>
void write_entry128(M& mem, hpa at, const std::array<std::uint64_t, 2>& w) {
  mem.store64(at, w[0] & ~std::uint64_t{1});
  mem.store64(at + 8, w[1]);
  mem.store64(at, w[0]);
}

// A phys_memory over a heap buffer of whole pages at [base, base + pages * 4 KiB). Every word
// is accessed through std::atomic_ref. An access outside the buffer, a misaligned one, a
// double free or a free of a foreign page aborts: these are bugs in the caller.
class buffer_phys_memory {
 public:
  explicit buffer_phys_memory(std::size_t pages, hpa base = hpa{0})
      : base_{base}, words_(pages * (page_bytes / 8)), in_use_(pages, false) {
    if (base.value() % page_bytes != 0) die("base not page aligned");
    free_.reserve(pages);
    for (std::size_t i = pages; i-- > 0;) free_.push_back(static_cast<std::uint32_t>(i));
  }

  [[nodiscard]] std::uint64_t load64(hpa a) const noexcept {
    return std::atomic_ref<std::uint64_t>{const_cast<std::uint64_t&>(words_[word_index(a)])}.load(
        std::memory_order_acquire);
  }
  void store64(hpa a, std::uint64_t v) noexcept {
    std::atomic_ref<std::uint64_t>{words_[word_index(a)]}.store(v, std::memory_order_release);
  }
  [[nodiscard]] std::optional<hpa> alloc_page() noexcept {
    if (free_.empty()) return std::nullopt;
    const std::uint32_t page = free_.back();
    free_.pop_back();
    in_use_[page] = true;
    std::uint64_t* p = &words_[page * (page_bytes / 8)];
    for (std::size_t i = 0; i < page_bytes / 8; ++i)
      std::atomic_ref<std::uint64_t>{p[i]}.store(0, std::memory_order_relaxed);
    return base_ + std::uint64_t{page} * page_bytes;
  }
  void free_page(hpa a) noexcept {
    if (!contains(a) || (a - base_) % page_bytes != 0) die("free_page: not a page of this buffer");
    const auto page = static_cast<std::size_t>((a - base_) / page_bytes);
    if (!in_use_[page]) die("free_page: page not allocated");
    in_use_[page] = false;
    free_.push_back(static_cast<std::uint32_t>(page));
  }

  [[nodiscard]] bool contains(hpa a, std::uint64_t len = 8) const noexcept {
    return a >= base_ && (a - base_) <= words_.size() * 8 && len <= words_.size() * 8 - (a - base_);
  }
  [[nodiscard]] hpa base() const noexcept { return base_; }
  [[nodiscard]] std::size_t pages() const noexcept { return in_use_.size(); }
  [[nodiscard]] std::size_t pages_in_use() const noexcept { return in_use_.size() - free_.size(); }

 private:
  [[noreturn]] static void die(const char* what) noexcept {
    std::fprintf(stderr, "keepalive::hw::buffer_phys_memory: %s\n", what);
    std::abort();
  }
  [[nodiscard]] std::size_t word_index(hpa a) const noexcept {
    if (!contains(a) || a.value() % 8 != 0) die("access outside the buffer or misaligned");
    return static_cast<std::size_t>((a - base_) / 8);
  }

  hpa base_;
  std::vector<std::uint64_t> words_;
  std::vector<bool> in_use_;
  std::vector<std::uint32_t> free_;
};

static_assert(phys_memory<buffer_phys_memory>);

}  // namespace keepalive::hw
