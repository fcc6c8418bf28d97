// Scenario conformance: the project's uapi conformance suite
// (tests/conformance) against the real kernel, on edu opened through VFIO.
//
// The suite itself adapts to the host's capabilities (ALLOW_MASKING without
// CAP_POSTED_INTR; PREPARE expected to be EOPNOTSUPP without CAP_STAGE2; this
// kernel reports CAP_STAGE2, so the stage-2 checks run). The
// wrapper below and the "n/a" verdict remain for older suites and are
// reported, so a change in the suite's behaviour shows in the report.
#include <linux/vfio_keepalive.h>

#include <cstring>
#include <set>
#include <string>

#include "conformance.hpp"
#include "guest.hpp"
#include "keepalive/abi/ops.hpp"

namespace ka_guest {
namespace {

namespace abi = keepalive::abi;

class masking_host final : public abi::syscalls {
 public:
  masking_host(abi::syscalls& real, bool add_masking) : real_{real}, add_masking_{add_masking} {}
  long ioctl(int fd, unsigned long cmd, void* arg) override {
    if (add_masking_ && cmd == VFIO_DEVICE_KEEPALIVE_ENTER && arg) {
      std::uint32_t flags = 0;
      std::memcpy(&flags, static_cast<std::byte*>(arg) + offsetof(vfio_keepalive_enter, flags), sizeof flags);
      flags |= VFIO_KEEPALIVE_ENTER_ALLOW_MASKING;
      std::memcpy(static_cast<std::byte*>(arg) + offsetof(vfio_keepalive_enter, flags), &flags, sizeof flags);
    }
    return real_.ioctl(fd, cmd, arg);
  }
  keepalive::result<int> open(std::string_view path, int flags) override { return real_.open(path, flags); }
  keepalive::errc close(int fd) override { return real_.close(fd); }
  keepalive::result<std::size_t> pread(int fd, std::span<std::byte> out, std::uint64_t offset) override {
    return real_.pread(fd, out, offset);
  }
  keepalive::result<std::size_t> pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) override {
    return real_.pwrite(fd, in, offset);
  }

 private:
  abi::syscalls& real_;
  bool add_masking_;
};

// Checks that presuppose a successful STAGE2_PREPARE.
const std::set<std::string> needs_stage2 = {
    "STAGE2_PREPARE: size 24 (exact)",
    "STAGE2_PREPARE: second prepare (zero tail) is EBUSY",
    "STAGE2_ABORT: after prepare",
};

}  // namespace

int run_conformance() {
  const auto loc = find_edu();
  if (!loc) return fail("conformance", "find_edu");
  auto& sys = abi::linux_syscalls();
  auto ctl = sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return fail("conformance", "ctl_open", rc_of(ctl));
  const auto info = abi::get_info(sys, *ctl);
  if (!info) return fail("conformance", "get_info", rc_of(info));
  const bool posted = info->caps & VFIO_KEEPALIVE_CAP_POSTED_INTR;
  const bool stage2 = info->caps & VFIO_KEEPALIVE_CAP_STAGE2;
  report("conformance", "caps", hex(info->caps));
  report("conformance", "enter_adds_allow_masking", posted ? 0 : 1);

  vfio_edu v;
  if (int rc = v.open_group(*loc); rc) return fail("conformance", "open_group", rc);
  if (int rc = v.get_device(loc->bdf); rc) return fail("conformance", "get_device", rc);

  masking_host host{sys, !posted};
  const auto checks = keepalive::conformance::run(host, v.device(), *ctl);
  unsigned passed = 0, failed = 0, not_applicable = 0;
  for (const auto& c : checks) {
    const char* verdict = "PASS";
    if (c.passed) {
      ++passed;
    } else if (!stage2 && needs_stage2.count(c.name)) {
      ++not_applicable;
      verdict = "N/A ";
    } else {
      ++failed;
      verdict = "FAIL";
    }
    fmt::print("KA-CHECK: {} {} ({})\n", verdict, c.name, c.detail);
  }
  report("conformance", "checks", checks.size());
  report("conformance", "passed", passed);
  report("conformance", "failed", failed);
  report("conformance", "not_applicable", not_applicable);
  // The suite promises to leave the device RUNNING.
  if (const auto st = abi::keepalive_status(sys, v.device()))
    report("conformance", "state_after", static_cast<unsigned>(st->state));
  sys.close(*ctl);
  return failed == 0 ? 0 : 1;
}

}  // namespace ka_guest
