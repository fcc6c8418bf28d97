// The one syscall seam. Everything in the library that talks to a kernel goes
// through a `syscalls`: linux_syscalls() calls open(2)/ioctl(2)/close(2) on
// real /dev/vfio nodes; the sim transport sends the same bytes to the
// simulated host. Tests swap implementations.
#pragma once

#include <string_view>

#include "keepalive/error.hpp"

namespace keepalive::abi {

class syscalls {
 public:
  virtual ~syscalls() = default;
  // Returns errc::ok or the errno the kernel reported (arg holds the struct).
  virtual errc ioctl(int fd, unsigned long cmd, void* arg) = 0;
  virtual result<int> open(std::string_view path, int flags) = 0;
  virtual errc close(int fd) = 0;
};

// The real kernel (process-wide singleton).
[[nodiscard]] syscalls& linux_syscalls() noexcept;

}  // namespace keepalive::abi
