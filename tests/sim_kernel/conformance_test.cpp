#include <linux/vfio_keepalive.h>

#include "conformance.hpp"
#include "host_fixture.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::testing;

TEST_CASE("uapi conformance suite against the sim kernel") {
  host_fixture h;
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  REQUIRE(a.cold_start(0));
  auto ctl = a.sys().open(VFIO_KEEPALIVE_CTL_PATH, 0);
  REQUIRE(ctl);
  const auto checks = conformance::run(a.sys(), a.device_fd(), *ctl);
  CHECK(checks.size() >= 40);
  for (const auto& c : checks) {
    CAPTURE(c.name);
    CAPTURE(c.detail);
    CHECK(c.passed);
  }
  CHECK(abi::keepalive_status(a.sys(), a.device_fd())->state == abi::device_state::running);
}

TEST_CASE("the baseline kernel has no keepalive: ENOTTY and no control node") {
  host_fixture h{kernel_mode::baseline};
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  REQUIRE(a.cold_start(0));
  CHECK(a.sys().open(VFIO_KEEPALIVE_CTL_PATH, 0).code() == errc::not_found);
  CHECK(abi::keepalive_status(a.sys(), a.device_fd()).code() == errc::not_tty);
}
