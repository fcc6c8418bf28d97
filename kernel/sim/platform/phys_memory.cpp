#include "phys_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace keepalive::sim {

result<phys_memory> phys_memory::create(std::uint64_t bytes, const std::string& name) {
  if (bytes == 0 || bytes % (2u << 20) != 0) return {errc::invalid, "physical memory must be a multiple of 2 MiB"};
  const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) return {errc_from_errno(errno), "memfd_create"};
  if (::ftruncate(fd, static_cast<off_t>(bytes)) < 0) {
    const int e = errno;
    ::close(fd);
    return {errc_from_errno(e), "ftruncate physical memory"};
  }
  auto m = attach(fd, bytes);
  if (!m) ::close(fd);
  return m;
}

result<phys_memory> phys_memory::attach(int fd, std::uint64_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return {errc_from_errno(errno), "mmap physical memory"};
  return phys_memory{fd, static_cast<std::byte*>(p), bytes};
}

phys_memory::phys_memory(phys_memory&& o) noexcept
    : fd_{std::exchange(o.fd_, -1)}, base_{std::exchange(o.base_, nullptr)}, size_{std::exchange(o.size_, 0)} {}

phys_memory& phys_memory::operator=(phys_memory&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = std::exchange(o.fd_, -1);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

phys_memory::~phys_memory() { release(); }

void phys_memory::release() noexcept {
  if (base_) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
  base_ = nullptr;
  fd_ = -1;
}

}  // namespace keepalive::sim
