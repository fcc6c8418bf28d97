// Guest physical memory through /dev/mem (CONFIG_STRICT_DEVMEM is off in the
// test kernel): a hw::readable_phys_memory for the table walkers, plus raw
// reads and writes for the scenarios.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <optional>

#include "keepalive/types.hpp"

namespace ka_guest {

class devmem {
 public:
  devmem() : fd_{open("/dev/mem", O_RDWR | O_CLOEXEC)} {}
  ~devmem() {
    if (fd_ >= 0) close(fd_);
  }
  devmem(const devmem&) = delete;
  devmem& operator=(const devmem&) = delete;
  [[nodiscard]] bool ok() const { return fd_ >= 0; }
  [[nodiscard]] std::uint64_t load64(keepalive::hpa a) const {
    std::uint64_t v = 0;
    if (pread(fd_, &v, sizeof v, static_cast<off_t>(a.value())) != sizeof v) ++failures_;
    return v;
  }
  [[nodiscard]] unsigned failures() const { return failures_; }
  bool read(std::uint64_t phys, void* out, std::size_t n) const {
    return pread(fd_, out, n, static_cast<off_t>(phys)) == static_cast<ssize_t>(n);
  }
  bool write(std::uint64_t phys, const void* in, std::size_t n) const {
    return pwrite(fd_, in, n, static_cast<off_t>(phys)) == static_cast<ssize_t>(n);
  }

 private:
  int fd_;
  mutable unsigned failures_{0};
};

// A 64-bit MMIO register (two 32-bit reads, low first) of the page at `base`.
inline std::optional<std::uint64_t> mmio_read64(std::uint64_t base, unsigned offset) {
  const int fd = open("/dev/mem", O_RDONLY | O_SYNC | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  void* p = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(base));
  close(fd);
  if (p == MAP_FAILED) return std::nullopt;
  const auto* regs = static_cast<const volatile std::uint32_t*>(p);
  const std::uint64_t v = regs[offset / 4] | std::uint64_t{regs[offset / 4 + 1]} << 32;
  munmap(p, 4096);
  return v;
}

}  // namespace ka_guest
