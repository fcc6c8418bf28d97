// The device lifecycle against expectations written out by hand from the spec
// (fsm/device.hpp prose and uapi/linux/vfio_keepalive.h), not recomputed from
// the table under test.
#include <doctest/doctest.h>
#include <linux/vfio_keepalive.h>

#include <array>
#include <cstddef>
#include <string_view>

#include <keepalive/fsm/device.hpp>

#include "grid_check.hpp"

using namespace keepalive;
using fsm::device_state;
using fsm_test::named_arc;

namespace {

constexpr std::size_t n = 7;

// Row = from, column = to, both in uapi order:
//   running kept_alive ownerless reclaimed frozen restored error
// o normal arc, r reset arc, f failure arc, b refused EBUSY, n refused ENOENT.
constexpr std::array<std::string_view, n> expected_grid{
    "bobnbbf",  // running:    enter, fail; reclaim -> ENOENT
    "obobbbf",  // kept_alive: leave, close, fail
    "rbboobf",  // ownerless:  reset, reclaim, prepare_stage2, fail
    "obobbbf",  // reclaimed:  leave, close, fail
    "bbobbof",  // frozen:     abort_stage2, finish_kexec, fail
    "rbboobf",  // restored:   reset, reclaim, prepare_stage2, fail
    "rbbbbbb",  // error:      reset only
};

// next_hop, worked out by hand over the normal arcs (letters: R K O C F S E).
constexpr std::array<std::string_view, n> expected_next_hop{
    "RKKKKKE",  // running: everything via kept_alive
    "RKOOOOE",  // kept_alive
    "CCOCFFE",  // ownerless: to running via reclaim, never the reset arc
    "RROCOOE",  // reclaimed
    "OOOOFSE",  // frozen
    "CCCCFSE",  // restored
    "REEEEEE",  // error: only running
};

constexpr device_state from_letter(char c) {
  switch (c) {
    case 'R': return device_state::running;
    case 'K': return device_state::kept_alive;
    case 'O': return device_state::ownerless;
    case 'C': return device_state::reclaimed;
    case 'F': return device_state::frozen;
    case 'S': return device_state::restored;
    default: return device_state::error;
  }
}

constexpr std::array<named_arc<device_state>, 20> expected_arcs{{
    {device_state::running, device_state::kept_alive, "enter"},
    {device_state::kept_alive, device_state::running, "leave"},
    {device_state::kept_alive, device_state::ownerless, "close"},
    {device_state::ownerless, device_state::reclaimed, "reclaim"},
    {device_state::restored, device_state::reclaimed, "reclaim"},
    {device_state::reclaimed, device_state::running, "leave"},
    {device_state::reclaimed, device_state::ownerless, "close"},
    {device_state::ownerless, device_state::frozen, "prepare_stage2"},
    {device_state::restored, device_state::frozen, "prepare_stage2"},
    {device_state::frozen, device_state::ownerless, "abort_stage2"},
    {device_state::frozen, device_state::restored, "finish_kexec"},
    {device_state::ownerless, device_state::running, "reset"},
    {device_state::restored, device_state::running, "reset"},
    {device_state::error, device_state::running, "reset"},
    {device_state::running, device_state::error, "fail"},
    {device_state::kept_alive, device_state::error, "fail"},
    {device_state::ownerless, device_state::error, "fail"},
    {device_state::reclaimed, device_state::error, "fail"},
    {device_state::frozen, device_state::error, "fail"},
    {device_state::restored, device_state::error, "fail"},
}};

}  // namespace

TEST_CASE("device fsm: state values are the uapi's") {
  CHECK(static_cast<int>(device_state::running) == VFIO_KEEPALIVE_STATE_RUNNING);
  CHECK(static_cast<int>(device_state::kept_alive) == VFIO_KEEPALIVE_STATE_KEPT_ALIVE);
  CHECK(static_cast<int>(device_state::ownerless) == VFIO_KEEPALIVE_STATE_OWNERLESS);
  CHECK(static_cast<int>(device_state::reclaimed) == VFIO_KEEPALIVE_STATE_RECLAIMED);
  CHECK(static_cast<int>(device_state::frozen) == VFIO_KEEPALIVE_STATE_FROZEN);
  CHECK(static_cast<int>(device_state::restored) == VFIO_KEEPALIVE_STATE_RESTORED);
  CHECK(static_cast<int>(device_state::error) == VFIO_KEEPALIVE_STATE_ERROR);
  CHECK(fsm::device_state_count == 7);
}

TEST_CASE("device fsm: every listed arc is allowed, named, and checks ok") {
  fsm_test::check_arcs(fsm::device_table, fsm::device_arcs.size(), expected_arcs);
}

TEST_CASE("device fsm: all 49 pairs against the hand-written grid") {
  fsm_test::check_grid<device_state>(fsm::device_table, expected_grid, expected_arcs.size());
}

TEST_CASE("device fsm: uapi-documented refusals") {
  using enum device_state;
  CHECK(fsm::check(kept_alive, kept_alive) == errc::busy);  // double enter
  CHECK(fsm::check(ownerless, kept_alive) == errc::busy);   // enter when not RUNNING
  CHECK(fsm::check(ownerless, running) == errc::ok);        // RESET_DEVICE on OWNERLESS
  CHECK(fsm::check(frozen, running) == errc::busy);         // reset while FROZEN
  CHECK(fsm::check(kept_alive, frozen) == errc::busy);      // PREPARE while owned
  CHECK(fsm::check(reclaimed, frozen) == errc::busy);
  CHECK(fsm::check(running, reclaimed) == errc::not_found); // reclaim outside keepalive
  CHECK(fsm::check(kept_alive, reclaimed) == errc::busy);   // still owned
  CHECK(fsm::check(reclaimed, reclaimed) == errc::busy);    // second reclaim
  CHECK(fsm::check(error, reclaimed) == errc::busy);
  CHECK(fsm::check(ownerless, ownerless) == errc::busy);    // LEAVE while OWNERLESS is not an arc either
}

TEST_CASE("device fsm: next_hop over all pairs, and the spec's examples") {
  fsm_test::check_next_hop<device_state>(expected_next_hop, from_letter);
  using enum device_state;
  CHECK(fsm::next_hop(kept_alive, reclaimed) == ownerless);
  CHECK(fsm::next_hop(running, frozen) == kept_alive);
  CHECK(fsm::next_hop(error, reclaimed) == error);
  CHECK_FALSE(fsm::reachable(error, reclaimed));
  CHECK(fsm::reachable(error, running));
  CHECK(fsm::next_hop(frozen, error) == error);
  CHECK(fsm::device_table.hops(running, frozen) == 3);    // enter, close, prepare
  CHECK(fsm::device_table.hops(frozen, running) == 3);    // abort, reclaim, leave
  CHECK(fsm::device_table.hops(running, restored) == 4);  // ... and kexec
  CHECK(fsm::device_table.hops(kept_alive, error) == 1);
}

TEST_CASE("device fsm: walking next_hop from running reaches every state by arcs") {
  for (std::size_t t = 0; t < n; ++t) {
    const device_state target = fsm_test::st<device_state>(t);
    device_state at = device_state::running;
    int steps = 0;
    while (at != target && steps < 10) {
      const device_state hop = fsm::next_hop(at, target);
      REQUIRE(fsm::check(at, hop) == errc::ok);
      at = hop;
      ++steps;
    }
    CHECK(at == target);
  }
}

TEST_CASE("device fsm: properties") {
  fsm_test::check_properties(fsm::device_table);
  CHECK(fsm::device_table.initial() == device_state::running);
  CHECK(fsm::device_table.error() == device_state::error);
}

TEST_CASE("device fsm: names, and values from outside") {
  constexpr std::array<std::string_view, n> names{"running", "kept_alive", "ownerless", "reclaimed",
                                                  "frozen",  "restored",   "error"};
  fsm_test::check_names<device_state>(names);
  const auto stray = static_cast<device_state>(VFIO_KEEPALIVE_STATE_ERROR + 1);
  CHECK(fsm::next_hop(device_state::running, stray) == device_state::error);
}
