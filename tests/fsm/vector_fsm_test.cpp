// The vector machine against expectations written out by hand from the spec
// (fsm/vector.hpp prose), not recomputed from the table under test.
#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <string_view>

#include <keepalive/fsm/vector.hpp>

#include "grid_check.hpp"

using namespace keepalive;
using fsm::vector_state;
using fsm_test::named_arc;

namespace {

constexpr std::size_t n = 6;

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

constexpr std::array<named_arc<vector_state>, 17> expected_arcs{{
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
  fsm_test::check_arcs(fsm::vector_table, fsm::vector_arcs.size(), expected_arcs);
}

TEST_CASE("vector fsm: all 36 pairs against the hand-written grid") {
  fsm_test::check_grid<vector_state>(fsm::vector_table, expected_grid, expected_arcs.size());
}

TEST_CASE("vector fsm: next_hop over all pairs, and examples") {
  fsm_test::check_next_hop<vector_state>(expected_next_hop, from_letter);
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
  fsm_test::check_properties(fsm::vector_table);
  constexpr std::array<std::string_view, n> names{"free", "remapped", "posted", "preserved", "reconnected", "error"};
  fsm_test::check_names<vector_state>(names);
}
