// The vector machine against expectations written out by hand from the spec
// (fsm/vector.hpp prose), not recomputed from the table under test.
#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <string_view>

#include <keepalive/fsm/vector.hpp>

using namespace keepalive;
using fsm::vector_state;

namespace {

constexpr std::size_t n = 6;
constexpr vector_state st(std::size_t i) { return static_cast<vector_state>(i); }

// Row = from, column = to: free remapped posted preserved reconnected error.
// o normal arc, r reset arc, f failure arc, b refused EBUSY.
constexpr std::array<std::string_view, n> expected_grid{
    "bobbbf",  // free:        setup
    "oboobf",  // remapped:    teardown, connect, preserve
    "oobobf",  // posted:      teardown, disconnect, preserve
    "rbbbof",  // preserved:   discard, reconnect
    "boobbf",  // reconnected: drain (to remapped or posted)
    "rbbbbb",  // error:       reset only
};

// Letters: F free, M remapped, P posted, V preserved, C reconnected, E error.
constexpr std::array<std::string_view, n> expected_next_hop{
    "FMMMME",  // free: everything starts with setup
    "FMPVVE",  // remapped
    "FMPVVE",  // posted
    "CCCVCE",  // preserved: never the discard arc, always reconnect first
    "MMPMCE",  // reconnected
    "FEEEEE",  // error: only free
};

constexpr vector_state from_letter(char c) {
  switch (c) {
    case 'F': return vector_state::free;
    case 'M': return vector_state::remapped;
    case 'P': return vector_state::posted;
    case 'V': return vector_state::preserved;
    case 'C': return vector_state::reconnected;
    default: return vector_state::error;
  }
}

struct named_arc {
  vector_state from;
  vector_state to;
  std::string_view name;
};
constexpr std::array<named_arc, 17> expected_arcs{{
    {vector_state::free, vector_state::remapped, "setup"},
    {vector_state::remapped, vector_state::posted, "connect"},
    {vector_state::posted, vector_state::remapped, "disconnect"},
    {vector_state::remapped, vector_state::free, "teardown"},
    {vector_state::posted, vector_state::free, "teardown"},
    {vector_state::remapped, vector_state::preserved, "preserve"},
    {vector_state::posted, vector_state::preserved, "preserve"},
    {vector_state::preserved, vector_state::reconnected, "reconnect"},
    {vector_state::reconnected, vector_state::posted, "drain"},
    {vector_state::reconnected, vector_state::remapped, "drain"},
    {vector_state::preserved, vector_state::free, "discard"},
    {vector_state::free, vector_state::error, "fail"},
    {vector_state::remapped, vector_state::error, "fail"},
    {vector_state::posted, vector_state::error, "fail"},
    {vector_state::preserved, vector_state::error, "fail"},
    {vector_state::reconnected, vector_state::error, "fail"},
    {vector_state::error, vector_state::free, "reset"},
}};

}  // namespace

TEST_CASE("vector fsm: every listed arc is allowed, named, and checks ok") {
  CHECK(fsm::vector_arcs.size() == expected_arcs.size());
  for (const named_arc& a : expected_arcs) {
    CAPTURE(fsm::name(a.from));
    CAPTURE(fsm::name(a.to));
    CHECK(fsm::vector_allowed(a.from, a.to));
    CHECK(fsm::check(a.from, a.to) == errc::ok);
    CHECK(fsm::vector_table.arc_name(a.from, a.to) == a.name);
  }
}

TEST_CASE("vector fsm: all 36 pairs against the hand-written grid") {
  std::size_t arcs = 0;
  for (std::size_t f = 0; f < n; ++f)
    for (std::size_t t = 0; t < n; ++t) {
      const char want = expected_grid[f][t];
      CAPTURE(fsm::name(st(f)));
      CAPTURE(fsm::name(st(t)));
      const bool arc = want != 'b';
      arcs += arc ? 1 : 0;
      CHECK(fsm::allowed(st(f), st(t)) == arc);
      CHECK(fsm::check(st(f), st(t)) == (arc ? errc::ok : errc::busy));
      CHECK(fsm::vector_table.direct(st(f), st(t)) == (arc ? st(t) : vector_state::error));
      if (want == 'r') CHECK(fsm::vector_table.kind(st(f), st(t)) == fsm::arc_kind::reset);
      if (want == 'f') CHECK(fsm::vector_table.kind(st(f), st(t)) == fsm::arc_kind::failure);
      if (want == 'o') CHECK(fsm::vector_table.kind(st(f), st(t)) == fsm::arc_kind::normal);
    }
  CHECK(arcs == expected_arcs.size());
}

TEST_CASE("vector fsm: next_hop over all pairs, and examples") {
  for (std::size_t f = 0; f < n; ++f)
    for (std::size_t t = 0; t < n; ++t) {
      CAPTURE(fsm::name(st(f)));
      CAPTURE(fsm::name(st(t)));
      CHECK(fsm::next_hop(st(f), st(t)) == from_letter(expected_next_hop[f][t]));
    }
  using enum vector_state;
  CHECK(fsm::next_hop(free, posted) == remapped);                 // setup, then connect
  CHECK(fsm::next_hop(preserved, posted) == reconnected);         // reconnect, then drain
  CHECK(fsm::next_hop(error, posted) == error);
  CHECK(fsm::vector_table.hops(preserved, free) == 3);            // reconnect, drain, teardown
  CHECK_FALSE(fsm::reachable(error, preserved));
  CHECK(fsm::check(free, posted) == errc::busy);                  // posting needs an IRTE
  CHECK(fsm::check(posted, reconnected) == errc::busy);           // never preserved
  CHECK(fsm::check(preserved, remapped) == errc::busy);
}

TEST_CASE("vector fsm: properties and names") {
  CHECK(fsm::vector_table.every_state_reachable_from_initial());
  CHECK(fsm::vector_table.initial_reachable_from_every_state());
  CHECK(fsm::vector_table.every_state_has_failure_arc());
  CHECK(fsm::vector_table.error_left_only_by_reset());
  CHECK(fsm::vector_table.arc_kinds_consistent());
  CHECK(fsm::vector_table.blocked_arcs_map_to_error());
  CHECK(fsm::vector_table.routes_follow_arcs());
  constexpr std::array<std::string_view, n> names{"free", "remapped", "posted", "preserved", "reconnected", "error"};
  for (std::size_t s = 0; s < n; ++s) CHECK(fsm::name(st(s)) == names[s]);
  CHECK(fsm::name(static_cast<vector_state>(n)) == "invalid");
  CHECK(fsm::check(static_cast<vector_state>(n), vector_state::free) == errc::invalid);
}
