// The domain machine against expectations written out by hand from the spec
// (fsm/domain.hpp prose), not recomputed from the table under test.
#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <string_view>

#include <keepalive/fsm/domain.hpp>

#include "grid_check.hpp"

using namespace keepalive;
using fsm::domain_state;
using fsm_test::named_arc;

namespace {

constexpr std::size_t n = 5;

// Row = from, column = to: none attached preserved adopted error.
// o normal arc, r reset arc, f failure arc, b refused EBUSY.
constexpr std::array<std::string_view, n> expected_grid{
    "bobbf",  // none:      attach
    "obobf",  // attached:  detach, preserve
    "rbbof",  // preserved: discard, adopt
    "boobf",  // adopted:   settle, preserve
    "rbbbb",  // error:     reset only
};

// Letters: N none, A attached, P preserved, D adopted, E error.
constexpr std::array<std::string_view, n> expected_next_hop{
    "NAAAE",  // none
    "NAPPE",  // attached
    "DDPDE",  // preserved: to none via adopt, never the discard arc
    "AAPDE",  // adopted
    "NEEEE",  // error: only none
};

constexpr domain_state from_letter(char c) {
  switch (c) {
    case 'N': return domain_state::none;
    case 'A': return domain_state::attached;
    case 'P': return domain_state::preserved;
    case 'D': return domain_state::adopted;
    default: return domain_state::error;
  }
}

constexpr std::array<named_arc<domain_state>, 12> expected_arcs{{
    {domain_state::none, domain_state::attached, "attach"},
    {domain_state::attached, domain_state::none, "detach"},
    {domain_state::attached, domain_state::preserved, "preserve"},
    {domain_state::preserved, domain_state::adopted, "adopt"},
    {domain_state::adopted, domain_state::attached, "settle"},
    {domain_state::adopted, domain_state::preserved, "preserve"},
    {domain_state::preserved, domain_state::none, "discard"},
    {domain_state::none, domain_state::error, "fail"},
    {domain_state::attached, domain_state::error, "fail"},
    {domain_state::preserved, domain_state::error, "fail"},
    {domain_state::adopted, domain_state::error, "fail"},
    {domain_state::error, domain_state::none, "reset"},
}};

}  // namespace

TEST_CASE("domain fsm: every listed arc is allowed, named, and checks ok") {
  fsm_test::check_arcs(fsm::domain_table, fsm::domain_arcs.size(), expected_arcs);
}

TEST_CASE("domain fsm: all 25 pairs against the hand-written grid") {
  fsm_test::check_grid<domain_state>(fsm::domain_table, expected_grid, expected_arcs.size());
}

TEST_CASE("domain fsm: next_hop over all pairs, and examples") {
  fsm_test::check_next_hop<domain_state>(expected_next_hop, from_letter);
  using enum domain_state;
  CHECK(fsm::next_hop(none, adopted) == attached);
  CHECK(fsm::domain_table.hops(none, adopted) == 3);  // attach, preserve, adopt
  CHECK(fsm::next_hop(error, adopted) == error);
  CHECK_FALSE(fsm::reachable(error, attached));
  CHECK(fsm::check(none, adopted) == errc::busy);
  CHECK(fsm::check(preserved, attached) == errc::busy);  // must be adopted first
}

TEST_CASE("domain fsm: properties and names") {
  fsm_test::check_properties(fsm::domain_table);
  constexpr std::array<std::string_view, n> names{"none", "attached", "preserved", "adopted", "error"};
  fsm_test::check_names<domain_state>(names);
}
