// The one syscall seam. Everything in the library that talks to a kernel goes
// through a `syscalls`: linux_syscalls() calls open(2)/ioctl(2)/close(2) on
// real /dev/vfio nodes; the sim transport sends the same bytes to the
// simulated host. Tests swap implementations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "keepalive/error.hpp"

namespace keepalive::abi {

class syscalls {
 public:
  virtual ~syscalls() = default;
  // As ioctl(2) in kernel style: a non-negative result (0, or a value such as
  // the fd of VFIO_GROUP_GET_DEVICE_FD), or -errno. `arg` is the struct, a
  // string, or an integer cast to a pointer, as the command defines.
  virtual long ioctl(int fd, unsigned long cmd, void* arg) = 0;
  virtual result<int> open(std::string_view path, int flags) = 0;
  virtual errc close(int fd) = 0;
  // VFIO region access (pread/pwrite on a device fd at a region offset).
  virtual result<std::size_t> pread(int fd, std::span<std::byte> out, std::uint64_t offset) = 0;
  virtual result<std::size_t> pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) = 0;
};

// The real kernel (process-wide singleton).
[[nodiscard]] syscalls& linux_syscalls() noexcept;

}  // namespace keepalive::abi
