// The domain machine against expectations written out by hand from the spec
// (fsm/domain.hpp prose), not recomputed from the table under test.
#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <string_view>

#include <keepalive/fsm/domain.hpp>

using namespace keepalive;
using fsm::domain_state;

namespace {

constexpr std::size_t n = 5;
constexpr domain_state st(std::size_t i) { return static_cast<domain_state>(i); }

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

struct named_arc {
  domain_state from;
  domain_state to;
  std::string_view name;
};
constexpr std::array<named_arc, 12> expected_arcs{{
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
  CHECK(fsm::domain_arcs.size() == expected_arcs.size());
  for (const named_arc& a : expected_arcs) {
    CAPTURE(fsm::name(a.from));
    CAPTURE(fsm::name(a.to));
    CHECK(fsm::domain_allowed(a.from, a.to));
    CHECK(fsm::check(a.from, a.to) == errc::ok);
    CHECK(fsm::domain_table.arc_name(a.from, a.to) == a.name);
  }
}

TEST_CASE("domain fsm: all 25 pairs against the hand-written grid") {
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
      CHECK(fsm::domain_table.direct(st(f), st(t)) == (arc ? st(t) : domain_state::error));
      if (want == 'r') CHECK(fsm::domain_table.kind(st(f), st(t)) == fsm::arc_kind::reset);
      if (want == 'f') CHECK(fsm::domain_table.kind(st(f), st(t)) == fsm::arc_kind::failure);
      if (want == 'o') CHECK(fsm::domain_table.kind(st(f), st(t)) == fsm::arc_kind::normal);
    }
  CHECK(arcs == expected_arcs.size());
}

TEST_CASE("domain fsm: next_hop over all pairs, and examples") {
  for (std::size_t f = 0; f < n; ++f)
    for (std::size_t t = 0; t < n; ++t) {
      CAPTURE(fsm::name(st(f)));
      CAPTURE(fsm::name(st(t)));
      CHECK(fsm::next_hop(st(f), st(t)) == from_letter(expected_next_hop[f][t]));
    }
  using enum domain_state;
  CHECK(fsm::next_hop(none, adopted) == attached);
  CHECK(fsm::domain_table.hops(none, adopted) == 3);  // attach, preserve, adopt
  CHECK(fsm::next_hop(error, adopted) == error);
  CHECK_FALSE(fsm::reachable(error, attached));
  CHECK(fsm::check(none, adopted) == errc::busy);
  CHECK(fsm::check(preserved, attached) == errc::busy);  // must be adopted first
}

TEST_CASE("domain fsm: properties and names") {
  CHECK(fsm::domain_table.every_state_reachable_from_initial());
  CHECK(fsm::domain_table.initial_reachable_from_every_state());
  CHECK(fsm::domain_table.every_state_has_failure_arc());
  CHECK(fsm::domain_table.error_left_only_by_reset());
  CHECK(fsm::domain_table.arc_kinds_consistent());
  CHECK(fsm::domain_table.blocked_arcs_map_to_error());
  CHECK(fsm::domain_table.routes_follow_arcs());
  constexpr std::array<std::string_view, n> names{"none", "attached", "preserved", "adopted", "error"};
  for (std::size_t s = 0; s < n; ++s) CHECK(fsm::name(st(s)) == names[s]);
  CHECK(fsm::name(static_cast<domain_state>(n)) == "invalid");
}
