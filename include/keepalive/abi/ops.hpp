// Typed calls of the keepalive uapi (caller side). Each builds the struct the
// way the uapi requires (size set, reserved zero), issues it through a
// `syscalls`, and returns the out_* fields as values or an error with context.
#pragma once

#include <cstdint>
#include <vector>

#include "keepalive/abi/syscalls.hpp"
#include "keepalive/error.hpp"
#include "keepalive/fsm/device.hpp"
#include "keepalive/types.hpp"

namespace keepalive::abi {

using device_state = fsm::device_state;  // values are the uapi's
enum class irq_mode : std::uint32_t { none = 0, posted = 1, masked = 2 };

struct enter_options {
  bool allow_masking = false;  // VFIO_KEEPALIVE_ENTER_ALLOW_MASKING
};
struct enter_reply {
  irq_mode mode;
  std::uint32_t nr_vectors;
};
struct device_status {
  device_state state;
  irq_mode mode;
  std::uint32_t nr_vectors;
  std::uint32_t nr_pending;
  domain_id domain;
  std::uint64_t dma_faults;
};
struct host_info {
  std::uint32_t version;
  std::uint32_t caps;
  std::uint32_t nr_devices;
  std::uint64_t generation;
};
struct device_entry {
  bdf device;
  device_state state;
  irq_mode mode;
  std::uint32_t nr_vectors;
  std::uint32_t nr_pending;
  domain_id domain;
};
struct stage2_reply {
  std::uint32_t nr_devices;
  std::uint64_t image_bytes;
};
struct event {
  std::uint64_t seq;
  std::uint32_t type;
  bdf device;
  int error_number;
  std::uint64_t data;
};

// Device fd.
result<enter_reply> keepalive_enter(syscalls& sys, int device_fd, const token& t, enter_options opt = {});
status keepalive_leave(syscalls& sys, int device_fd, const token& t);
result<device_status> keepalive_status(syscalls& sys, int device_fd);
// The iommufd context a device parked through its cdev is held in: a new fd
// (O_CLOEXEC) the caller owns. ENOENT when it is not parked in one.
result<int> keepalive_get_iommufd(syscalls& sys, int device_fd, const token& t);

// Control node.
result<host_info> get_info(syscalls& sys, int ctl_fd);
result<std::vector<device_entry>> list_devices(syscalls& sys, int ctl_fd);  // sizes itself (EOVERFLOW)
result<stage2_reply> stage2_prepare(syscalls& sys, int ctl_fd);
result<stage2_reply> stage2_abort(syscalls& sys, int ctl_fd);
// errc::again when the queue is empty.
result<event> read_event(syscalls& sys, int ctl_fd);
status reset_device(syscalls& sys, int ctl_fd, bdf device);

// The device name that reclaims a kept-alive device through VFIO_GROUP_GET_DEVICE_FD.
[[nodiscard]] std::string reclaim_name(bdf device, const token& t);

}  // namespace keepalive::abi
