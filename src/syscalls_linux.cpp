// The only file that calls open(2), ioctl(2) and close(2) on kernel nodes.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "keepalive/abi/syscalls.hpp"

namespace keepalive::abi {
namespace {
class linux_impl final : public syscalls {
 public:
  long ioctl(int fd, unsigned long cmd, void* arg) override {
    int r;
    do r = ::ioctl(fd, cmd, arg);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -static_cast<long>(errno) : r;
  }
  result<int> open(std::string_view path, int flags) override {
    const std::string p{path};
    const int fd = ::open(p.c_str(), flags | O_CLOEXEC);
    if (fd < 0) return {errc_from_errno(errno), "open " + p};
    return fd;
  }
  errc close(int fd) override { return ::close(fd) < 0 ? errc_from_errno(errno) : errc::ok; }
  result<std::size_t> pread(int fd, std::span<std::byte> out, std::uint64_t offset) override {
    const ssize_t n = ::pread(fd, out.data(), out.size(), static_cast<off_t>(offset));
    if (n < 0) return {errc_from_errno(errno), "pread"};
    return static_cast<std::size_t>(n);
  }
  result<std::size_t> pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) override {
    const ssize_t n = ::pwrite(fd, in.data(), in.size(), static_cast<off_t>(offset));
    if (n < 0) return {errc_from_errno(errno), "pwrite"};
    return static_cast<std::size_t>(n);
  }
};
}  // namespace

syscalls& linux_syscalls() noexcept {
  static linux_impl impl;
  return impl;
}
}  // namespace keepalive::abi
