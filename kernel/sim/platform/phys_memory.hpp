// Simulated physical memory: one shared memory file (memfd) mapped by the
// platform, the sim kernel and every VMM (guest RAM is a slice of it, so a
// VMM maps its RAM from the same fd at an offset and the device DMAs into it).
// Host-physical address = byte offset in the file.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "keepalive/error.hpp"
#include "keepalive/types.hpp"

namespace keepalive::sim {

inline constexpr std::uint64_t page_size = 4096;

class phys_memory {
 public:
  // A new sparse memfd of `bytes` (a multiple of 2 MiB).
  static result<phys_memory> create(std::uint64_t bytes, const std::string& name = "keepalive-phys");
  // Map an existing file (e.g. an fd received over a socket).
  static result<phys_memory> attach(int fd, std::uint64_t bytes);

  phys_memory(phys_memory&&) noexcept;
  phys_memory& operator=(phys_memory&&) noexcept;
  phys_memory(const phys_memory&) = delete;
  phys_memory& operator=(const phys_memory&) = delete;
  ~phys_memory();

  [[nodiscard]] int fd() const noexcept { return fd_; }
  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
  [[nodiscard]] bool contains(hpa a, std::uint64_t len) const noexcept {
    return a.value() <= size_ && len <= size_ - a.value();
  }

  // Aligned 64-bit accesses are atomic: hardware (the sim IOMMU and device
  // threads) and software (the sim kernel) touch the same words concurrently.
  [[nodiscard]] std::uint64_t load64(hpa a) const noexcept {
    return std::atomic_ref<std::uint64_t>{word(a)}.load(std::memory_order_acquire);
  }
  void store64(hpa a, std::uint64_t v) noexcept {
    std::atomic_ref<std::uint64_t>{word(a)}.store(v, std::memory_order_release);
  }
  [[nodiscard]] std::uint64_t* word_ptr(hpa a) const noexcept { return &word(a); }

  // Raw bytes for payload DMA and descriptor rings (caller checks contains()).
  [[nodiscard]] std::span<std::byte> bytes(hpa a, std::uint64_t len) const noexcept {
    return {base_ + a.value(), static_cast<std::size_t>(len)};
  }
  [[nodiscard]] std::byte* base() const noexcept { return base_; }

 private:
  phys_memory(int fd, std::byte* base, std::uint64_t size) noexcept : fd_{fd}, base_{base}, size_{size} {}
  [[nodiscard]] std::uint64_t& word(hpa a) const noexcept {
    return *reinterpret_cast<std::uint64_t*>(base_ + a.value());
  }
  void release() noexcept;

  int fd_ = -1;
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
};

}  // namespace keepalive::sim
