// Compile-time facts about every uapi struct: its ioctl number, the smallest
// size the kernel accepts (offsetofend of the last mandatory field), the flags
// it knows, and which fields are __reserved. Both the library (caller side)
// and the sim kernel (callee side) read the same traits.
#pragma once

#include <linux/vfio_keepalive.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#define KEEPALIVE_OFFSETOFEND(type, member) (offsetof(type, member) + sizeof(((type*)nullptr)->member))

namespace keepalive::abi {

// Layout: identical for 32- and 64-bit userspace (checked here, once).
static_assert(sizeof(vfio_keepalive_enter) == 40);
static_assert(offsetof(vfio_keepalive_enter, token) == 8);
static_assert(offsetof(vfio_keepalive_enter, __reserved) == 24);
static_assert(offsetof(vfio_keepalive_enter, out_irq_mode) == 28);
static_assert(offsetof(vfio_keepalive_enter, out_nr_vectors) == 32);
static_assert(sizeof(vfio_keepalive_leave) == 24);
static_assert(sizeof(vfio_keepalive_status) == 40);
static_assert(offsetof(vfio_keepalive_status, out_dma_faults) == 32);
static_assert(sizeof(vfio_keepalive_iommufd) == 32);
static_assert(offsetof(vfio_keepalive_iommufd, token) == 8);
static_assert(offsetof(vfio_keepalive_iommufd, out_iommufd) == 24);
static_assert(offsetof(vfio_keepalive_iommufd, __reserved) == 28);
static_assert(sizeof(vfio_keepalive_info) == 32);
static_assert(offsetof(vfio_keepalive_info, out_generation) == 24);
static_assert(sizeof(vfio_keepalive_device_entry) == 24);
static_assert(sizeof(vfio_keepalive_list) == 24);
static_assert(offsetof(vfio_keepalive_list, entries_uptr) == 16);
static_assert(sizeof(vfio_keepalive_stage2) == 24);
static_assert(offsetof(vfio_keepalive_stage2, out_image_bytes) == 16);
static_assert(sizeof(vfio_keepalive_event) == 40);
static_assert(offsetof(vfio_keepalive_event, out_seq) == 8);
static_assert(offsetof(vfio_keepalive_event, out_data) == 32);
static_assert(sizeof(vfio_keepalive_reset) == 16);

template <typename T>
struct ioctl_traits;  // specialised below for every uapi struct

#define KEEPALIVE_IOCTL_TRAITS(T, CMD, MIN_SIZE, FLAGS, RESERVED_CHECK) \
  template <>                                                         \
  struct ioctl_traits<T> {                                            \
    static constexpr unsigned long cmd = CMD;                         \
    static constexpr std::uint32_t min_size = MIN_SIZE;               \
    static constexpr std::uint32_t known_flags = FLAGS;               \
    static constexpr const char* name = #CMD;                         \
    static constexpr bool reserved_zero(const T& v) noexcept { return RESERVED_CHECK; } \
  };

KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_enter, VFIO_DEVICE_KEEPALIVE_ENTER,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_enter, __reserved2),
                       VFIO_KEEPALIVE_ENTER_ALLOW_MASKING, v.__reserved == 0 && v.__reserved2 == 0)
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_leave, VFIO_DEVICE_KEEPALIVE_LEAVE,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_leave, token), 0u, ((void)v, true))
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_status, VFIO_DEVICE_KEEPALIVE_GET_STATUS,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_status, out_dma_faults), 0u, v.__reserved == 0)
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_iommufd, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_iommufd, __reserved), 0u, v.__reserved == 0)
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_info, VFIO_KEEPALIVE_GET_INFO,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_info, out_generation), 0u, v.__reserved == 0)
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_list, VFIO_KEEPALIVE_LIST_DEVICES,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_list, entries_uptr), 0u, v.__reserved == 0)
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_stage2, VFIO_KEEPALIVE_STAGE2_PREPARE,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_stage2, out_image_bytes), 0u, v.__reserved == 0)
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_event, VFIO_KEEPALIVE_READ_EVENT,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_event, out_data), 0u, v.__reserved == 0)
KEEPALIVE_IOCTL_TRAITS(vfio_keepalive_reset, VFIO_KEEPALIVE_RESET_DEVICE,
                       KEEPALIVE_OFFSETOFEND(vfio_keepalive_reset, __reserved), 0u, v.__reserved == 0)
// KEEPALIVE_IOCTL_TRAITS stays defined: other ABIs served by the same engine (the
// sim host's sim_uapi.h) declare their structs with it.

// Every struct starts with size then flags (the house style).
template <typename T>
concept uapi_struct = requires(T v) {
  requires std::is_trivially_copyable_v<T>;
  requires std::is_same_v<decltype(v.size), __u32>;
  requires std::is_same_v<decltype(v.flags), __u32>;
  requires offsetof(T, size) == 0 && offsetof(T, flags) == 4;
  ioctl_traits<T>::cmd;
};

static_assert(uapi_struct<vfio_keepalive_enter> && uapi_struct<vfio_keepalive_leave> &&
              uapi_struct<vfio_keepalive_status> && uapi_struct<vfio_keepalive_iommufd> &&
              uapi_struct<vfio_keepalive_info> && uapi_struct<vfio_keepalive_list> &&
              uapi_struct<vfio_keepalive_stage2> &&
              uapi_struct<vfio_keepalive_event> && uapi_struct<vfio_keepalive_reset>);

// A request initialised the way a caller must: size set, everything else zero.
template <uapi_struct T>
[[nodiscard]] constexpr T make_request() noexcept {
  T v{};
  v.size = sizeof(T);
  return v;
}

}  // namespace keepalive::abi
