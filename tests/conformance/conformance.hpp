// The keepalive uapi conformance suite: the same checks against any kernel
// behind a `syscalls` (the sim kernel in-process, the real patched Linux
// inside the QEMU guest). Every ioctl gets the iommufd TEST_LENGTH treatment
// plus unknown flags and non-zero reserved fields.
#pragma once

#include <string>
#include <vector>

#include "keepalive/abi/syscalls.hpp"

namespace keepalive::conformance {

struct check {
  std::string name;
  bool passed;
  std::string detail;  // what was expected and what came back
};

// device_fd: an open VFIO device fd in state RUNNING (no keepalive);
// ctl_fd: the control node. Leaves the device RUNNING.
std::vector<check> run(abi::syscalls& sys, int device_fd, int ctl_fd);

}  // namespace keepalive::conformance
