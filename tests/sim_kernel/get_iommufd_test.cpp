// VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD on the sim kernel, which parks devices
// only through their group: never a context fd, and the state (not the
// token) decides between ENOENT and EBUSY.
#include <linux/vfio_keepalive.h>

#include <array>
#include <cstring>
#include <string>
#include <utility>

#include <keepalive/abi/ops.hpp>

#include "core.hpp"
#include "host_fixture.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::testing;

namespace {
const token tok = *token::parse("5a0c7e1f-3b2d-4c6e-9f80-a1b2c3d4e5f6");
const token wrong = *token::parse("00000000-0000-4000-8000-000000000001");
const std::array<token, 3> every_token{tok, wrong, token{}};

// The raw ioctl, so the reply bytes can be inspected: out_iommufd starts at a
// sentinel that only a success may overwrite.
long raw_get_iommufd(abi::syscalls& sys, int fd, const token& t, vfio_keepalive_iommufd& r) {
  r = abi::make_request<vfio_keepalive_iommufd>();
  std::memcpy(r.token, t.raw().data(), sizeof r.token);
  r.out_iommufd = -7;
  return sys.ioctl(fd, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, &r);
}

// GET_IOMMUFD answers `want` with every token, never writes its reply, and
// leaves the device in `state`.
void check_every_token(abi::syscalls& sys, int fd, errc want, abi::device_state state) {
  for (const auto& t : every_token) {
    const std::string token_text = t.to_string();
    CAPTURE(token_text);
    vfio_keepalive_iommufd r{};
    CHECK(raw_get_iommufd(sys, fd, t, r) == -static_cast<long>(want));
    CHECK(r.out_iommufd == -7);
    auto typed = abi::keepalive_get_iommufd(sys, fd, t);
    CHECK(typed.code() == want);
  }
  CHECK(abi::keepalive_status(sys, fd)->state == state);
}

// The next owner reclaims through the group (RECLAIMED: EBUSY) and leaves
// keepalive (RUNNING: ENOENT).
void reclaim_and_leave(host_fixture& h) {
  vmm b{*h.k, "vmm-b", *h.g, h.layout, h.ram, nic0};
  REQUIRE(b.reopen(tok));
  check_every_token(b.sys(), b.device_fd(), errc::busy, abi::device_state::reclaimed);
  REQUIRE(b.leave_keepalive(tok));
  check_every_token(b.sys(), b.device_fd(), errc::not_found, abi::device_state::running);
}

}  // namespace

TEST_CASE("GET_IOMMUFD through the device fd: RUNNING ENOENT, KEPT_ALIVE and RECLAIMED EBUSY, whatever the token") {
  host_fixture h;
  auto a = std::make_unique<vmm>(*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0);
  REQUIRE(a->cold_start(0));
  check_every_token(a->sys(), a->device_fd(), errc::not_found, abi::device_state::running);

  REQUIRE(a->enter_keepalive(tok));
  check_every_token(a->sys(), a->device_fd(), errc::busy, abi::device_state::kept_alive);
  a->exit();
  a.reset();

  // OWNERLESS now: parked through its group, so reclaimed through the group.
  reclaim_and_leave(h);
}

TEST_CASE("GET_IOMMUFD: the dispatch rules come before the state") {
  host_fixture h;
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  REQUIRE(a.cold_start(0));
  auto r = abi::make_request<vfio_keepalive_iommufd>();
  std::memcpy(r.token, tok.raw().data(), sizeof r.token);
  r.__reserved = 1;
  CHECK(a.sys().ioctl(a.device_fd(), VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, &r) == -EINVAL);
  r.__reserved = 0;
  r.flags = 1;
  CHECK(a.sys().ioctl(a.device_fd(), VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, &r) == -EINVAL);
  r.flags = 0;
  r.size = sizeof r - 1;
  CHECK(a.sys().ioctl(a.device_fd(), VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, &r) == -EINVAL);
  r.size = sizeof r;
  CHECK(a.sys().ioctl(a.device_fd(), VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, &r) == -ENOENT);
  // Not a control-node ioctl.
  auto ctl = a.sys().open(VFIO_KEEPALIVE_CTL_PATH, 0);
  REQUIRE(ctl);
  CHECK(a.sys().ioctl(*ctl, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, &r) == -ENOTTY);
}

TEST_CASE("GET_IOMMUFD in every state, including those no device fd is open in on the sim") {
  // OWNERLESS, FROZEN, RESTORED and ERROR devices have no owner: the cdev
  // path (a real kernel) reaches them, the sim's group path never does.
  using enum fsm::device_state;
  const std::array<std::pair<fsm::device_state, errc>, 7> want{{
      {running, errc::not_found},
      {kept_alive, errc::busy},
      {ownerless, errc::not_found},  // parked through its group: no iommufd context
      {reclaimed, errc::busy},
      {frozen, errc::busy},
      {restored, errc::not_found},  // no iommufd context survives a kexec
      {error, errc::busy},
  }};
  static_assert(want.size() == fsm::device_state_count);
  for (const auto& [state, code] : want) {
    const std::string state_name{fsm::name(state)};
    CAPTURE(state_name);
    vdev d;
    d.state = state;
    if (state != running && state != error) d.owner_token = tok;
    for (const auto& t : every_token) {
      const std::string token_text = t.to_string();
      CAPTURE(token_text);
      auto r = abi::make_request<vfio_keepalive_iommufd>();
      std::memcpy(r.token, t.raw().data(), sizeof r.token);
      r.out_iommufd = -7;
      CHECK(kernel_core::ka_get_iommufd(d, r) == code);
      CHECK(r.out_iommufd == -7);
    }
    CHECK(d.state == state);
  }
}

TEST_CASE("GET_IOMMUFD after a kexec: the RESTORED device is reclaimed through its group, then EBUSY") {
  host_fixture h;
  auto a = std::make_unique<vmm>(*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0);
  REQUIRE(a->cold_start(0));
  REQUIRE(a->enter_keepalive(tok));
  a->exit();
  a.reset();
  {
    auto ctl = h.k->spawn("ctl");
    auto fd = ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
    REQUIRE(fd);
    REQUIRE(abi::stage2_prepare(*ctl, *fd));
  }
  h.kexec();
  {
    auto ctl = h.k->spawn("ctl");
    auto fd = ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
    REQUIRE(fd);
    auto rows = abi::list_devices(*ctl, *fd);
    REQUIRE(rows);
    REQUIRE(rows->size() == 1);
    CHECK((*rows)[0].state == abi::device_state::restored);
  }
  reclaim_and_leave(h);
}

TEST_CASE("GET_IOMMUFD on the baseline kernel is ENOTTY") {
  host_fixture h{kernel_mode::baseline};
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  REQUIRE(a.cold_start(0));
  CHECK(abi::keepalive_get_iommufd(a.sys(), a.device_fd(), tok).code() == errc::not_tty);
}
