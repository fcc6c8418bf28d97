// The sim kernel's page allocator over its region of physical memory, and the
// memory providers the hw/ table builders run on. The allocator's state is
// software (process memory): it dies with the kernel at kexec; the new kernel
// rebuilds it with the handed-over ranges marked in use.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "keepalive/hw/phys_memory.hpp"
#include "phys_memory.hpp"

namespace keepalive::sim {

// Physical memory map of the sim host (fixed, documented in docs/sim.md):
//   [0, 2 MiB)                         never allocated (hpa 0 means "none")
//   [2 MiB, kernel_end - 2 MiB)        kernel pages: tables, IR table, descriptors
//   [kernel_end - 2 MiB, kernel_end)   handover area (stage-2 image)
//   [kernel_end, end)                  guest RAM: VMMs map slices of it
struct memory_map {
  std::uint64_t kernel_end = 64ull << 20;
  [[nodiscard]] static constexpr std::uint64_t kernel_start() noexcept { return 2ull << 20; }
  [[nodiscard]] std::uint64_t handover_start() const noexcept { return kernel_end - (2ull << 20); }
  [[nodiscard]] std::uint64_t handover_bytes() const noexcept { return 2ull << 20; }
  [[nodiscard]] std::uint64_t guest_start() const noexcept { return kernel_end; }
};

class kmem {
 public:
  kmem(phys_memory& mem, const memory_map& map);

  [[nodiscard]] phys_memory& memory() const noexcept { return mem_; }
  [[nodiscard]] std::uint64_t load64(hpa a) const noexcept { return mem_.load64(a); }
  void store64(hpa a, std::uint64_t v) noexcept { mem_.store64(a, v); }
  [[nodiscard]] std::optional<hpa> alloc_page() noexcept { return alloc_pages(1); }
  void free_page(hpa a) noexcept { free_pages(a, 1); }

  // Contiguous, naturally aligned to `pages` rounded up to a power of two
  // when align_to_size (the IR table needs 1 MiB contiguous).
  [[nodiscard]] std::optional<hpa> alloc_pages(std::uint64_t pages, bool align_to_size = false) noexcept;
  void free_pages(hpa a, std::uint64_t pages) noexcept;
  // Mark a range in use (handed over by the previous kernel). False if it is
  // outside the kernel region or already in use.
  [[nodiscard]] bool reserve(hpa a, std::uint64_t bytes) noexcept;
  [[nodiscard]] std::uint64_t pages_in_use() const noexcept { return in_use_count_; }
  // Forget every allocation (a refused handover image: nothing of it is kept).
  void reset() noexcept {
    used_.assign(used_.size(), false);
    in_use_count_ = 0;
    hint_ = 0;
  }

 private:
  phys_memory& mem_;
  std::uint64_t first_page_, page_count_;
  std::vector<bool> used_;
  std::uint64_t in_use_count_ = 0;
  std::uint64_t hint_ = 0;
};
static_assert(hw::phys_memory<kmem>);

// A provider that records which pages it allocated: a domain's page tables,
// so the domain can be freed whole or listed for the handover image.
class tracked_kmem {
 public:
  tracked_kmem(kmem& k, std::vector<hpa>& pages) : k_{k}, pages_{pages} {}
  [[nodiscard]] std::uint64_t load64(hpa a) const noexcept { return k_.load64(a); }
  void store64(hpa a, std::uint64_t v) noexcept { k_.store64(a, v); }
  [[nodiscard]] std::optional<hpa> alloc_page() noexcept {
    auto p = k_.alloc_page();
    if (p) pages_.push_back(*p);
    return p;
  }
  void free_page(hpa a) noexcept;

 private:
  kmem& k_;
  std::vector<hpa>& pages_;
};
static_assert(hw::phys_memory<tracked_kmem>);

}  // namespace keepalive::sim
