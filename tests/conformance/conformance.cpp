#include "conformance.hpp"

#include <linux/vfio_keepalive.h>

#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "keepalive/abi/uapi.hpp"

namespace keepalive::conformance {
namespace {

const char* errno_name(long rc) {
  switch (-rc) {
    case 0: return "0";
    case EINVAL: return "EINVAL";
    case E2BIG: return "E2BIG";
    case EBUSY: return "EBUSY";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case ENOTTY: return "ENOTTY";
    case EAGAIN: return "EAGAIN";
    case EOVERFLOW: return "EOVERFLOW";
    case EFAULT: return "EFAULT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EMFILE: return "EMFILE";
    default: return "other";
  }
}

struct suite {
  abi::syscalls& sys;
  std::vector<check> out;

  void expect(const std::string& name, long rc, long want) {
    out.push_back({name, rc == want, fmt::format("want {}, got {} ({})", errno_name(want), errno_name(rc), rc)});
  }
  void expect_not(const std::string& name, long rc, std::initializer_list<long> not_wanted) {
    bool ok = true;
    for (long w : not_wanted) ok = ok && rc != w;
    out.push_back({name, ok, fmt::format("got {} ({})", errno_name(rc), rc)});
  }

  // A request of `bytes` bytes whose first sizeof(T) bytes are `base`.
  template <typename T>
  long issue(int fd, unsigned long cmd, const T& base, std::uint32_t size, std::size_t bytes) {
    std::vector<std::byte> buf(std::max<std::size_t>(bytes, sizeof(T)) + 16, std::byte{0});
    std::memcpy(buf.data(), &base, sizeof(T));
    std::memcpy(buf.data(), &size, sizeof size);
    return sys.ioctl(fd, cmd, buf.data());
  }

  // TEST_LENGTH: size-1 -> EINVAL; sizeof+1 with a non-zero tail -> E2BIG;
  // sizeof+8 with a zero tail -> like sizeof; unknown flag -> EINVAL.
  template <typename T>
  void length(const char* name, int fd, unsigned long cmd, T base, std::initializer_list<long> ok_results) {
    using tr = abi::ioctl_traits<T>;
    expect(fmt::format("{}: size {} (min-1)", name, tr::min_size - 1), issue(fd, cmd, base, tr::min_size - 1, sizeof(T)),
           -EINVAL);
    {
      std::vector<std::byte> buf(sizeof(T) + 8, std::byte{0});
      std::memcpy(buf.data(), &base, sizeof(T));
      const std::uint32_t size = sizeof(T) + 1;
      std::memcpy(buf.data(), &size, sizeof size);
      buf[sizeof(T)] = std::byte{1};
      expect(fmt::format("{}: size {} with a non-zero tail", name, size), sys.ioctl(fd, cmd, buf.data()), -E2BIG);
    }
    T flagged = base;
    flagged.flags |= 1u << 31;
    expect(fmt::format("{}: unknown flag", name), issue(fd, cmd, flagged, sizeof(T), sizeof(T)), -EINVAL);
    const long exact = issue(fd, cmd, base, sizeof(T), sizeof(T));
    const long longer = issue(fd, cmd, base, sizeof(T) + 8, sizeof(T) + 8);
    bool ok = false;
    for (long w : ok_results) ok = ok || exact == w;
    out.push_back({fmt::format("{}: size {} (exact)", name, sizeof(T)), ok, fmt::format("got {} ({})", errno_name(exact), exact)});
    expect(fmt::format("{}: zero tail served like exact", name), longer, exact);
  }
};

template <typename T>
T req() {
  return abi::make_request<T>();
}

}  // namespace

std::vector<check> run(abi::syscalls& sys, int dev, int ctl) {
  suite s{sys, {}};
  // What this host can do decides what a correct ENTER and STAGE2 look like.
  auto caps_req = req<vfio_keepalive_info>();
  const bool have_info = sys.ioctl(ctl, VFIO_KEEPALIVE_GET_INFO, &caps_req) == 0;
  s.out.push_back({"GET_INFO answers", have_info, ""});
  const bool posted = (caps_req.out_caps & VFIO_KEEPALIVE_CAP_POSTED_INTR) != 0;
  const bool stage2 = (caps_req.out_caps & VFIO_KEEPALIVE_CAP_STAGE2) != 0;
  // Device fd.
  auto enter = req<vfio_keepalive_enter>();
  if (!posted) enter.flags = VFIO_KEEPALIVE_ENTER_ALLOW_MASKING;  // the masking fallback
  std::memset(enter.token, 0x5a, sizeof enter.token);
  {
    // Everything but the exact call must leave the device RUNNING, so the
    // length checks use a token that is then left again.
    auto bad = enter;
    bad.__reserved = 1;
    s.expect("ENTER: __reserved != 0", s.issue(dev, VFIO_DEVICE_KEEPALIVE_ENTER, bad, sizeof bad, sizeof bad), -EINVAL);
    bad = enter;
    bad.__reserved2 = 1;
    s.expect("ENTER: __reserved2 != 0", s.issue(dev, VFIO_DEVICE_KEEPALIVE_ENTER, bad, sizeof bad, sizeof bad), -EINVAL);
    auto nil = req<vfio_keepalive_enter>();
    s.expect("ENTER: nil token", s.issue(dev, VFIO_DEVICE_KEEPALIVE_ENTER, nil, sizeof nil, sizeof nil), -EINVAL);
  }
  s.length("ENTER", dev, VFIO_DEVICE_KEEPALIVE_ENTER, enter, {0});
  // The exact ENTER succeeded; the zero-tail one then found it KEPT_ALIVE.
  // Compare that pair separately: double enter is EBUSY.
  s.out.back() = {"ENTER: double enter (zero tail) is EBUSY", s.out.back().detail.find("EBUSY") != std::string::npos,
                  s.out.back().detail};
  // GET_IOMMUFD answers by state before token: KEPT_ALIVE is EBUSY whatever the token.
  auto iommufd = req<vfio_keepalive_iommufd>();
  std::memset(iommufd.token, 0x5a, sizeof iommufd.token);
  auto iommufd_wrong = iommufd;
  iommufd_wrong.token[0] ^= 1;
  s.expect("GET_IOMMUFD: KEPT_ALIVE is EBUSY",
           s.issue(dev, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, iommufd, sizeof iommufd, sizeof iommufd), -EBUSY);
  s.expect("GET_IOMMUFD: KEPT_ALIVE with a wrong token is EBUSY",
           s.issue(dev, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, iommufd_wrong, sizeof iommufd_wrong, sizeof iommufd_wrong),
           -EBUSY);
  auto leave = req<vfio_keepalive_leave>();
  std::memset(leave.token, 0x5a, sizeof leave.token);
  auto wrong = leave;
  wrong.token[0] ^= 1;
  s.expect("LEAVE: wrong token", s.issue(dev, VFIO_DEVICE_KEEPALIVE_LEAVE, wrong, sizeof wrong, sizeof wrong), -EACCES);
  s.length("LEAVE", dev, VFIO_DEVICE_KEEPALIVE_LEAVE, leave, {0});
  s.out.back() = {"LEAVE: second leave (zero tail) is EBUSY", s.out.back().detail.find("EBUSY") != std::string::npos,
                  s.out.back().detail};
  auto status = req<vfio_keepalive_status>();
  s.length("GET_STATUS", dev, VFIO_DEVICE_KEEPALIVE_GET_STATUS, status, {0});
  status.__reserved = 1;
  s.expect("GET_STATUS: __reserved != 0", s.issue(dev, VFIO_DEVICE_KEEPALIVE_GET_STATUS, status, sizeof status, sizeof status), -EINVAL);
  // RUNNING: not parked anywhere, so a valid request (the token it entered with) is ENOENT.
  s.length("GET_IOMMUFD", dev, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, iommufd, {-ENOENT});
  s.expect("GET_IOMMUFD: RUNNING with a wrong token is ENOENT",
           s.issue(dev, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, iommufd_wrong, sizeof iommufd_wrong, sizeof iommufd_wrong),
           -ENOENT);
  iommufd.__reserved = 1;
  s.expect("GET_IOMMUFD: __reserved != 0",
           s.issue(dev, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, iommufd, sizeof iommufd, sizeof iommufd), -EINVAL);

  // Control node.
  auto info = req<vfio_keepalive_info>();
  s.length("GET_INFO", ctl, VFIO_KEEPALIVE_GET_INFO, info, {0});
  info.__reserved = 1;
  s.expect("GET_INFO: __reserved != 0", s.issue(ctl, VFIO_KEEPALIVE_GET_INFO, info, sizeof info, sizeof info), -EINVAL);
  auto list = req<vfio_keepalive_list>();
  s.length("LIST_DEVICES", ctl, VFIO_KEEPALIVE_LIST_DEVICES, list, {0});
  auto stage2_req = req<vfio_keepalive_stage2>();
  s.length("STAGE2_ABORT", ctl, VFIO_KEEPALIVE_STAGE2_ABORT, stage2_req, {-EBUSY});  // nothing prepared
  if (stage2) {
    s.length("STAGE2_PREPARE", ctl, VFIO_KEEPALIVE_STAGE2_PREPARE, stage2_req, {0});
    s.out.back() = {"STAGE2_PREPARE: second prepare (zero tail) is EBUSY",
                    s.out.back().detail.find("EBUSY") != std::string::npos, s.out.back().detail};
    s.expect("STAGE2_ABORT: after prepare",
             s.issue(ctl, VFIO_KEEPALIVE_STAGE2_ABORT, stage2_req, sizeof stage2_req, sizeof stage2_req), 0);
  } else {  // a host without CAP_STAGE2 refuses PREPARE after validating it
    s.length("STAGE2_PREPARE", ctl, VFIO_KEEPALIVE_STAGE2_PREPARE, stage2_req, {-EOPNOTSUPP});
  }
  auto event = req<vfio_keepalive_event>();
  s.length("READ_EVENT", ctl, VFIO_KEEPALIVE_READ_EVENT, event, {0, -EAGAIN});
  auto reset = req<vfio_keepalive_reset>();
  reset.bdf = 0xffff;  // no such device
  s.length("RESET_DEVICE", ctl, VFIO_KEEPALIVE_RESET_DEVICE, reset, {-ENOENT});
  s.expect("unknown ioctl on the control node", sys.ioctl(ctl, VFIO_KEEPALIVE_GET_INFO + 0x20, &info), -ENOTTY);
  return s.out;
}

}  // namespace keepalive::conformance
