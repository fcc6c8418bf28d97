// The input language of fuzz_sim_kernel_ioctl, shared with the seed-corpus
// writer. An input is [host] then operations until the bytes run out; every
// field is read front to back, little-endian, and reads past the end give 0,
// so zero bytes always mean "the ordinary, valid request".
//
//   host      u8   bit 0: the platform without posted interrupts
//   op        u8   % op::count, then per op:
//   ioctl     fd u8, command u8 (>= commands.size(): then a raw u32), argument
//   pread     fd u8, region u8 (0 config space, 1 BAR0, else that VFIO
//             region index), offset u16, length u16 (mod 4097)
//   pwrite    the same, then length data bytes (never RATE_PPS: wire off)
//   open      which u8 (0 container, 1 group of 00:04.0, 2 control, 3 VM,
//             4 "/dev/vfio/<u8>", else a u8-long raw path)
//   close     fd u8
//   get_device group fd u8, device u8, token u8: the name a VMM passes
//   restart   token u8: the VMM exits, a new one opens everything again
//   kexec     flags u8, n u8, n x (offset u16, xor u8), token u8: the VMM
//             exits; with flag 1 stage 2 is prepared; flag 2 applies the XOR
//             patches to the image; flag 4 then re-seals it (total_bytes and
//             CRC made right: an old kernel that wrote nonsense, which only
//             the new kernel's own checks can refuse); kexec; a VMM on the new
//             kernel
//   msi       which u8: a device sends an MSI. Bits 0-1: the MSI-X entry, bit
//             2: the device (00:04.0 or 00:05.0), as programmed in its table
//             (nothing while the entry is masked); bit 7: address u32 and data
//             u32 from the input instead (a device writing anything it likes)
//
// fd: 0..4 the process's container, group, device, control node and VM; 5 the
// fd opened last; >= 8: raw fd (value - 8). device: bit 0 which NIC, bit 1 a
// function that does not exist. token: 0 none, 1..3 " vf_token=" one of three
// tokens (the third all zero), else a malformed option. Arguments by kind:
//   none      nothing (a null pointer)
//   integer   u32, XORed onto the usual value (VFIO_TYPE1v2_IOMMU)
//   int_ptr   u32, XORed onto the container fd (a pointer to that int)
//   string    u8 length, bytes (NUL-terminated by the harness)
//   vfio      sel u8, argsz XOR u16, n u8, n x (offset u8, XOR u8) patches
//   sized     the same with `size` for `argsz`
// `sel` picks the template: a token (ENTER/LEAVE/GET_IOMMUFD; bit 7: ALLOW_MASKING), a
// vector (SET_IRQS start/count, BYPASS index; bit 0: DISCONNECT), an index
// (REGION/IRQ info), an IOVA in 2 MiB units (MAP/UNMAP), a device (RESET).
#pragma once

#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "sim_uapi.h"

namespace keepalive::fuzz {

enum class op : std::uint8_t { ioctl, pread, pwrite, open, close, get_device, restart, kexec, msi, count };
enum class node : std::uint8_t { container, group, device, control, vm, none };
enum class arg : std::uint8_t { none, integer, int_ptr, string, vfio, sized };

inline constexpr std::uint8_t fd_last_opened = 5;
inline constexpr std::uint8_t fd_raw_base = 8;
inline constexpr std::uint8_t kexec_prepare = 1, kexec_patch = 2, kexec_reseal = 4;

struct command {
  unsigned long cmd;
  const char* name;
  arg kind;
  node served_by;
  std::array<int, 6> errnos;  // what the uapi/VFIO documents for it (0-terminated)
};

// Every ioctl the sim host serves, with the errnos its documentation allows.
inline const std::array<command, 26> commands{{
    {VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION", arg::none, node::container, {}},
    {VFIO_CHECK_EXTENSION, "VFIO_CHECK_EXTENSION", arg::integer, node::container, {}},
    {VFIO_SET_IOMMU, "VFIO_SET_IOMMU", arg::integer, node::container, {EINVAL, EBUSY}},
    {VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA", arg::vfio, node::container, {EINVAL, EFAULT, EEXIST, ENOMEM, EBUSY}},
    {VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA", arg::vfio, node::container, {EINVAL}},
    {VFIO_GROUP_GET_STATUS, "VFIO_GROUP_GET_STATUS", arg::vfio, node::group, {EINVAL}},
    {VFIO_GROUP_SET_CONTAINER, "VFIO_GROUP_SET_CONTAINER", arg::int_ptr, node::group, {EBADF, EBUSY, EINVAL}},
    {VFIO_GROUP_UNSET_CONTAINER, "VFIO_GROUP_UNSET_CONTAINER", arg::none, node::group, {EINVAL, EBUSY}},
    {VFIO_GROUP_GET_DEVICE_FD, "VFIO_GROUP_GET_DEVICE_FD", arg::string, node::group, {EINVAL, ENOENT, EBUSY, EACCES, ENOMEM}},
    {VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO", arg::vfio, node::device, {EINVAL}},
    {VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO", arg::vfio, node::device, {EINVAL}},
    {VFIO_DEVICE_GET_IRQ_INFO, "VFIO_DEVICE_GET_IRQ_INFO", arg::vfio, node::device, {EINVAL}},
    {VFIO_DEVICE_SET_IRQS, "VFIO_DEVICE_SET_IRQS", arg::vfio, node::device, {EINVAL, EBADF, ENOMEM, EBUSY}},
    {VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET", arg::none, node::device, {EBUSY, EINVAL}},
    {VFIO_DEVICE_KEEPALIVE_ENTER, "VFIO_DEVICE_KEEPALIVE_ENTER", arg::sized, node::device, {EINVAL, E2BIG, EOPNOTSUPP, EBUSY, ENOMEM}},
    {VFIO_DEVICE_KEEPALIVE_LEAVE, "VFIO_DEVICE_KEEPALIVE_LEAVE", arg::sized, node::device, {EINVAL, E2BIG, EACCES, EBUSY}},
    {VFIO_DEVICE_KEEPALIVE_GET_STATUS, "VFIO_DEVICE_KEEPALIVE_GET_STATUS", arg::sized, node::device, {EINVAL, E2BIG}},
    {VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, "VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD", arg::sized, node::device, {EINVAL, E2BIG, ENOENT, EBUSY, EACCES, EMFILE}},
    {VFIO_KEEPALIVE_GET_INFO, "VFIO_KEEPALIVE_GET_INFO", arg::sized, node::control, {EINVAL, E2BIG}},
    {VFIO_KEEPALIVE_LIST_DEVICES, "VFIO_KEEPALIVE_LIST_DEVICES", arg::sized, node::control, {EINVAL, E2BIG, EOVERFLOW, EFAULT}},
    {VFIO_KEEPALIVE_STAGE2_PREPARE, "VFIO_KEEPALIVE_STAGE2_PREPARE", arg::sized, node::control, {EINVAL, E2BIG, EBUSY, ENOMEM}},
    {VFIO_KEEPALIVE_STAGE2_ABORT, "VFIO_KEEPALIVE_STAGE2_ABORT", arg::sized, node::control, {EINVAL, E2BIG, EBUSY}},
    {VFIO_KEEPALIVE_READ_EVENT, "VFIO_KEEPALIVE_READ_EVENT", arg::sized, node::control, {EINVAL, E2BIG, EAGAIN}},
    {VFIO_KEEPALIVE_RESET_DEVICE, "VFIO_KEEPALIVE_RESET_DEVICE", arg::sized, node::control, {EINVAL, E2BIG, ENOENT, EBUSY}},
    {KA_SIM_CREATE_PID, "KA_SIM_CREATE_PID", arg::sized, node::vm, {EINVAL, E2BIG, ENOMEM}},
    {KA_SIM_IRQ_BYPASS, "KA_SIM_IRQ_BYPASS", arg::sized, node::vm, {EINVAL, E2BIG, EBADF, ENOENT, EOPNOTSUPP}},
}};

[[nodiscard]] inline std::uint8_t command_index(unsigned long cmd) {
  for (std::size_t i = 0; i < commands.size(); ++i)
    if (commands[i].cmd == cmd) return static_cast<std::uint8_t>(i);
  return 0xff;
}

// Writes inputs in the language above (seed corpus, regression inputs).
class program {
 public:
  explicit program(std::uint8_t host = 0) { u8(host); }
  program& ioctl(node fd, unsigned long cmd) {
    u8(static_cast<std::uint8_t>(op::ioctl));
    u8(static_cast<std::uint8_t>(fd));
    return u8(command_index(cmd));
  }
  // The argument of a vfio/sized command: template `sel`, no patches.
  program& templ(std::uint8_t sel) { return u8(sel).u16(0).u8(0); }
  program& get_device(std::uint8_t device, std::uint8_t tok) {
    return u8(static_cast<std::uint8_t>(op::get_device)).u8(static_cast<std::uint8_t>(node::group)).u8(device).u8(tok);
  }
  program& msi(std::uint8_t which) { return u8(static_cast<std::uint8_t>(op::msi)).u8(which); }
  program& restart(std::uint8_t tok) { return u8(static_cast<std::uint8_t>(op::restart)).u8(tok); }
  struct patch {
    std::uint16_t offset;
    std::uint8_t x;
  };
  program& kexec(std::uint8_t flags, const std::vector<patch>& patches, std::uint8_t tok) {
    u8(static_cast<std::uint8_t>(op::kexec)).u8(flags).u8(static_cast<std::uint8_t>(patches.size()));
    for (auto p : patches) u16(p.offset).u8(p.x);
    return u8(tok);
  }
  program& access(op o, node fd, std::uint8_t region, std::uint16_t offset, const std::vector<std::uint8_t>& data) {
    u8(static_cast<std::uint8_t>(o)).u8(static_cast<std::uint8_t>(fd)).u8(region).u16(offset);
    u16(static_cast<std::uint16_t>(data.size()));
    if (o == op::pwrite)
      for (auto b : data) u8(b);
    return *this;
  }
  program& u8(std::uint8_t v) {
    bytes.push_back(v);
    return *this;
  }
  program& u16(std::uint16_t v) { return u8(static_cast<std::uint8_t>(v)).u8(static_cast<std::uint8_t>(v >> 8)); }
  std::vector<std::uint8_t> bytes;
};

}  // namespace keepalive::fuzz
