// The device lifecycle against expectations written out by hand from the spec
// (fsm/device.hpp prose and uapi/linux/vfio_keepalive.h), not recomputed from
// the table under test.
#include <doctest/doctest.h>
#include <linux/vfio_keepalive.h>

#include <array>
#include <cstddef>
#include <string_view>

#include <keepalive/fsm/device.hpp>

using namespace keepalive;
using fsm::device_state;

namespace {

constexpr std::size_t n = 7;
constexpr device_state st(std::size_t i) { return static_cast<device_state>(i); }

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

struct named_arc {
  device_state from;
  device_state to;
  std::string_view name;
};
constexpr std::array<named_arc, 20> expected_arcs{{
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
  CHECK(fsm::device_arcs.size() == expected_arcs.size());
  for (const named_arc& a : expected_arcs) {
    CAPTURE(fsm::name(a.from));
    CAPTURE(fsm::name(a.to));
    CHECK(fsm::device_allowed(a.from, a.to));
    CHECK(fsm::check(a.from, a.to) == errc::ok);
    CHECK(fsm::device_table.direct(a.from, a.to) == a.to);
    CHECK(fsm::device_table.arc_name(a.from, a.to) == a.name);
  }
}

TEST_CASE("device fsm: all 49 pairs against the hand-written grid") {
  std::size_t arcs = 0;
  for (std::size_t f = 0; f < n; ++f)
    for (std::size_t t = 0; t < n; ++t) {
      const char want = expected_grid[f][t];
      CAPTURE(fsm::name(st(f)));
      CAPTURE(fsm::name(st(t)));
      CAPTURE(want);
      const bool arc = want == 'o' || want == 'r' || want == 'f';
      arcs += arc ? 1 : 0;
      CHECK(fsm::allowed(st(f), st(t)) == arc);
      CHECK(fsm::device_table.direct(st(f), st(t)) == (arc ? st(t) : device_state::error));
      switch (want) {
        case 'o': CHECK(fsm::device_table.kind(st(f), st(t)) == fsm::arc_kind::normal); break;
        case 'r': CHECK(fsm::device_table.kind(st(f), st(t)) == fsm::arc_kind::reset); break;
        case 'f': CHECK(fsm::device_table.kind(st(f), st(t)) == fsm::arc_kind::failure); break;
        default: break;
      }
      const errc code = arc ? errc::ok : want == 'n' ? errc::not_found : errc::busy;
      CHECK(fsm::check(st(f), st(t)) == code);
    }
  CHECK(arcs == expected_arcs.size());
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
  for (std::size_t f = 0; f < n; ++f)
    for (std::size_t t = 0; t < n; ++t) {
      CAPTURE(fsm::name(st(f)));
      CAPTURE(fsm::name(st(t)));
      CHECK(fsm::next_hop(st(f), st(t)) == from_letter(expected_next_hop[f][t]));
    }
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
    device_state at = device_state::running;
    int steps = 0;
    while (at != st(t) && steps < 10) {
      const device_state hop = fsm::next_hop(at, st(t));
      REQUIRE(fsm::check(at, hop) == errc::ok);
      at = hop;
      ++steps;
    }
    CHECK(at == st(t));
  }
}

TEST_CASE("device fsm: properties") {
  CHECK(fsm::device_table.every_state_reachable_from_initial());
  CHECK(fsm::device_table.initial_reachable_from_every_state());
  CHECK(fsm::device_table.every_state_has_failure_arc());
  CHECK(fsm::device_table.error_left_only_by_reset());
  CHECK(fsm::device_table.arc_kinds_consistent());
  CHECK(fsm::device_table.blocked_arcs_map_to_error());
  CHECK(fsm::device_table.routes_follow_arcs());
  CHECK(fsm::device_table.initial() == device_state::running);
  CHECK(fsm::device_table.error() == device_state::error);
}

TEST_CASE("device fsm: names, and values from outside") {
  constexpr std::array<std::string_view, n> names{"running", "kept_alive", "ownerless", "reclaimed",
                                                  "frozen",  "restored",   "error"};
  for (std::size_t s = 0; s < n; ++s) CHECK(fsm::name(st(s)) == names[s]);
  const auto stray = static_cast<device_state>(VFIO_KEEPALIVE_STATE_ERROR + 1);
  CHECK(fsm::name(stray) == "invalid");
  CHECK(fsm::check(stray, device_state::running) == errc::invalid);
  CHECK(fsm::check(device_state::running, stray) == errc::invalid);
  CHECK_FALSE(fsm::allowed(stray, device_state::error));
  CHECK(fsm::next_hop(device_state::running, stray) == device_state::error);
}
