#include <cstring>

#include "keepalive/abi/ops.hpp"
#include "keepalive/abi/uapi.hpp"

namespace keepalive::abi {
namespace {
template <typename T>
errc issue(syscalls& sys, int fd, unsigned long cmd, T& req) {
  const long r = sys.ioctl(fd, cmd, &req);
  return r < 0 ? errc_from_errno(static_cast<int>(-r)) : errc::ok;
}
void put_token(__u8 (&dst)[VFIO_KEEPALIVE_TOKEN_SIZE], const token& t) {
  std::memcpy(dst, t.raw().data(), sizeof dst);
}
}  // namespace

result<enter_reply> keepalive_enter(syscalls& sys, int device_fd, const token& t, enter_options opt) {
  auto req = make_request<vfio_keepalive_enter>();
  req.flags = opt.allow_masking ? VFIO_KEEPALIVE_ENTER_ALLOW_MASKING : 0u;
  put_token(req.token, t);
  if (auto e = issue(sys, device_fd, VFIO_DEVICE_KEEPALIVE_ENTER, req); e != errc::ok)
    return {e, "VFIO_DEVICE_KEEPALIVE_ENTER"};
  return enter_reply{static_cast<irq_mode>(req.out_irq_mode), req.out_nr_vectors};
}

status keepalive_leave(syscalls& sys, int device_fd, const token& t) {
  auto req = make_request<vfio_keepalive_leave>();
  put_token(req.token, t);
  if (auto e = issue(sys, device_fd, VFIO_DEVICE_KEEPALIVE_LEAVE, req); e != errc::ok)
    return {e, "VFIO_DEVICE_KEEPALIVE_LEAVE"};
  return {};
}

result<device_status> keepalive_status(syscalls& sys, int device_fd) {
  auto req = make_request<vfio_keepalive_status>();
  if (auto e = issue(sys, device_fd, VFIO_DEVICE_KEEPALIVE_GET_STATUS, req); e != errc::ok)
    return {e, "VFIO_DEVICE_KEEPALIVE_GET_STATUS"};
  return device_status{static_cast<device_state>(req.out_state), static_cast<irq_mode>(req.out_irq_mode),
                       req.out_nr_vectors, req.out_nr_pending,
                       domain_id{static_cast<std::uint16_t>(req.out_domain_id)}, req.out_dma_faults};
}

result<int> keepalive_get_iommufd(syscalls& sys, int device_fd, const token& t) {
  auto req = make_request<vfio_keepalive_iommufd>();
  req.out_iommufd = -1;
  put_token(req.token, t);
  if (auto e = issue(sys, device_fd, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, req); e != errc::ok)
    return {e, "VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD"};
  if (req.out_iommufd < 0) return {errc::io, "VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD: success without an fd"};
  return req.out_iommufd;
}

result<host_info> get_info(syscalls& sys, int ctl_fd) {
  auto req = make_request<vfio_keepalive_info>();
  if (auto e = issue(sys, ctl_fd, VFIO_KEEPALIVE_GET_INFO, req); e != errc::ok)
    return {e, "VFIO_KEEPALIVE_GET_INFO"};
  return host_info{req.out_version, req.out_caps, req.out_nr_devices, req.out_generation};
}

result<std::vector<device_entry>> list_devices(syscalls& sys, int ctl_fd) {
  std::vector<vfio_keepalive_device_entry> rows(8);
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto req = make_request<vfio_keepalive_list>();
    req.nr_entries = static_cast<__u32>(rows.size());
    req.entries_uptr = reinterpret_cast<std::uintptr_t>(rows.data());
    const errc e = issue(sys, ctl_fd, VFIO_KEEPALIVE_LIST_DEVICES, req);
    if (e == errc::overflow) {
      rows.resize(req.nr_entries);
      continue;
    }
    if (e != errc::ok) return {e, "VFIO_KEEPALIVE_LIST_DEVICES"};
    std::vector<device_entry> out;
    out.reserve(req.nr_entries);
    for (std::uint32_t i = 0; i < req.nr_entries; ++i) {
      const auto& r = rows[i];
      out.push_back({bdf::from_packed(r.bdf), static_cast<device_state>(r.state), static_cast<irq_mode>(r.irq_mode),
                     r.nr_vectors, r.nr_pending, domain_id{static_cast<std::uint16_t>(r.domain_id)}});
    }
    return out;
  }
  return {errc::overflow, "VFIO_KEEPALIVE_LIST_DEVICES: device count kept growing"};
}

namespace {
result<stage2_reply> stage2(syscalls& sys, int ctl_fd, unsigned long cmd, const char* what) {
  auto req = make_request<vfio_keepalive_stage2>();
  if (auto e = issue(sys, ctl_fd, cmd, req); e != errc::ok) return {e, what};
  return stage2_reply{req.out_nr_devices, req.out_image_bytes};
}
}  // namespace

result<stage2_reply> stage2_prepare(syscalls& sys, int ctl_fd) {
  return stage2(sys, ctl_fd, VFIO_KEEPALIVE_STAGE2_PREPARE, "VFIO_KEEPALIVE_STAGE2_PREPARE");
}
result<stage2_reply> stage2_abort(syscalls& sys, int ctl_fd) {
  return stage2(sys, ctl_fd, VFIO_KEEPALIVE_STAGE2_ABORT, "VFIO_KEEPALIVE_STAGE2_ABORT");
}

result<event> read_event(syscalls& sys, int ctl_fd) {
  auto req = make_request<vfio_keepalive_event>();
  if (auto e = issue(sys, ctl_fd, VFIO_KEEPALIVE_READ_EVENT, req); e != errc::ok)
    return {e, "VFIO_KEEPALIVE_READ_EVENT"};
  return event{req.out_seq, req.out_type, bdf::from_packed(req.out_bdf), static_cast<int>(req.out_errno),
               req.out_data};
}

status reset_device(syscalls& sys, int ctl_fd, bdf device) {
  auto req = make_request<vfio_keepalive_reset>();
  req.bdf = device.packed();
  if (auto e = issue(sys, ctl_fd, VFIO_KEEPALIVE_RESET_DEVICE, req); e != errc::ok)
    return {e, "VFIO_KEEPALIVE_RESET_DEVICE " + device.to_string()};
  return {};
}

std::string reclaim_name(bdf device, const token& t) { return device.to_string() + " vf_token=" + t.to_string(); }

}  // namespace keepalive::abi
