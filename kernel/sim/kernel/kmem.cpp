#include "kmem.hpp"

#include <algorithm>
#include <cstring>

namespace keepalive::sim {

kmem::kmem(phys_memory& mem, const memory_map& map)
    : mem_{mem},
      first_page_{memory_map::kernel_start() / page_size},
      page_count_{(map.handover_start() - memory_map::kernel_start()) / page_size},
      used_(page_count_, false) {}

std::optional<hpa> kmem::alloc_pages(std::uint64_t pages, bool align_to_size) noexcept {
  if (pages == 0 || pages > page_count_) return std::nullopt;
  std::uint64_t align = 1;
  if (align_to_size)
    while (align < pages) align <<= 1;
  auto fits = [&](std::uint64_t start) {
    if (start + pages > page_count_) return false;
    for (std::uint64_t i = 0; i < pages; ++i)
      if (used_[start + i]) return false;
    return true;
  };
  // First fit from the hint, then from the start (allocation is rare and small).
  for (std::uint64_t pass = 0; pass < 2; ++pass) {
    std::uint64_t start = pass == 0 ? hint_ : 0;
    const std::uint64_t end = pass == 0 ? page_count_ : hint_ + pages;
    for (; start < end && start + pages <= page_count_; ++start) {
      if ((first_page_ + start) % align != 0) continue;
      if (!fits(start)) continue;
      for (std::uint64_t i = 0; i < pages; ++i) used_[start + i] = true;
      in_use_count_ += pages;
      hint_ = start + pages;
      const hpa a{(first_page_ + start) * page_size};
      std::memset(mem_.base() + a.value(), 0, pages * page_size);
      return a;
    }
  }
  return std::nullopt;
}

void kmem::free_pages(hpa a, std::uint64_t pages) noexcept {
  const std::uint64_t start = a.value() / page_size - first_page_;
  for (std::uint64_t i = 0; i < pages && start + i < page_count_; ++i) {
    if (used_[start + i]) --in_use_count_;
    used_[start + i] = false;
  }
  hint_ = std::min(hint_, start);
}

bool kmem::reserve(hpa a, std::uint64_t bytes) noexcept {
  if (a.value() % page_size || bytes % page_size || a.value() / page_size < first_page_) return false;
  const std::uint64_t start = a.value() / page_size - first_page_, pages = bytes / page_size;
  if (start + pages > page_count_) return false;
  for (std::uint64_t i = 0; i < pages; ++i)
    if (used_[start + i]) return false;
  for (std::uint64_t i = 0; i < pages; ++i) used_[start + i] = true;
  in_use_count_ += pages;
  return true;
}

void tracked_kmem::free_page(hpa a) noexcept {
  k_.free_page(a);
  pages_.erase(std::remove(pages_.begin(), pages_.end(), a), pages_.end());
}

}  // namespace keepalive::sim
