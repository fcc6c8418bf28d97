// fsm/table.hpp on small machines written for the test: the planner's choices
// and every property, each shown to fail on a machine that breaks it.
#include <doctest/doctest.h>

#include <array>

#include <keepalive/fsm/table.hpp>

using namespace keepalive;
using fsm::arc;
using fsm::arc_kind;

namespace {

enum class toy : unsigned char { idle, a, b, c, broken };
using enum toy;

// idle -> a -> b -> c, a shortcut idle -> c that is a reset (never routed
// through), c -> idle, failure arcs, broken -> idle reset.
constexpr auto good_arcs = std::to_array<arc<toy>>({
    {idle, a, "go"},
    {a, b, "step"},
    {b, c, "step"},
    {c, idle, "home"},
    {b, idle, "drop", arc_kind::reset},
    {idle, broken, "fail", arc_kind::failure},
    {a, broken, "fail", arc_kind::failure},
    {b, broken, "fail", arc_kind::failure},
    {c, broken, "fail", arc_kind::failure},
    {broken, idle, "reset", arc_kind::reset},
});
constexpr auto good_refusals = std::to_array<fsm::refusal<toy>>({{idle, c, errc::not_found}});
constexpr fsm::table<toy, 5, good_arcs.size(), good_refusals.size()> good{idle, broken, good_arcs, good_refusals};

static_assert(good.every_state_reachable_from_initial());
static_assert(good.initial_reachable_from_every_state());
static_assert(good.every_state_has_failure_arc());
static_assert(good.error_left_only_by_reset());
static_assert(good.arc_kinds_consistent());
static_assert(good.blocked_arcs_map_to_error());
static_assert(good.routes_follow_arcs());

}  // namespace

TEST_CASE("table: allowed, direct, check and names come from the arc list") {
  CHECK(good.allowed(idle, a));
  CHECK_FALSE(good.allowed(a, idle));
  CHECK_FALSE(good.allowed(idle, idle));
  CHECK(good.direct(idle, a) == a);
  CHECK(good.direct(a, idle) == broken);
  CHECK(good.check(idle, a) == errc::ok);
  CHECK(good.check(a, idle) == errc::busy);
  CHECK(good.check(idle, c) == errc::not_found);  // the override
  CHECK(good.check(c, c) == errc::busy);
  CHECK(good.arc_name(b, idle) == "drop");
  CHECK(good.arc_name(a, idle).empty());
  CHECK(good.kind(b, idle) == arc_kind::reset);
  CHECK(good.kind(b, broken) == arc_kind::failure);
  CHECK(good.kind(a, b) == arc_kind::normal);
}

TEST_CASE("table: routes use normal arcs; destructive arcs only when nothing else leads there") {
  // b -> idle: the direct reset exists, but the normal route b -> c -> idle wins.
  CHECK(good.next_hop(b, idle) == c);
  CHECK(good.hops(b, idle) == 2);
  CHECK(good.next_hop(idle, c) == a);
  CHECK(good.hops(idle, c) == 3);
  CHECK(good.next_hop(c, b) == idle);
  CHECK(good.hops(c, b) == 3);
  // Into error: only the failure arc.
  CHECK(good.next_hop(a, broken) == broken);
  CHECK(good.hops(a, broken) == 1);
  // Out of error: only its reset target.
  CHECK(good.next_hop(broken, idle) == idle);
  CHECK(good.next_hop(broken, b) == broken);
  CHECK(good.hops(broken, b) == fsm::no_route);
  CHECK_FALSE(good.reachable(broken, b));
  CHECK(good.reachable(broken, idle));
  // Staying put.
  CHECK(good.next_hop(b, b) == b);
  CHECK(good.hops(b, b) == 0);
}

TEST_CASE("table: values outside the enum are refused as invalid") {
  const auto stray = static_cast<toy>(9);
  CHECK_FALSE(good.in_range(stray));
  CHECK_FALSE(good.allowed(stray, a));
  CHECK(good.check(stray, a) == errc::invalid);
  CHECK(good.check(a, stray) == errc::invalid);
  CHECK(good.next_hop(a, stray) == broken);
  CHECK_FALSE(good.reachable(a, stray));
}

TEST_CASE("table: each property fails on a machine that breaks it") {
  SUBCASE("a state nobody reaches") {
    constexpr auto arcs = std::to_array<arc<toy>>({
        {idle, a, "go"},
        {a, idle, "back"},
        {idle, broken, "fail", arc_kind::failure},
        {a, broken, "fail", arc_kind::failure},
        {b, broken, "fail", arc_kind::failure},
        {c, broken, "fail", arc_kind::failure},
        {broken, idle, "reset", arc_kind::reset},
    });
    constexpr fsm::table<toy, 5, arcs.size()> t{idle, broken, arcs};
    CHECK_FALSE(t.every_state_reachable_from_initial());
    CHECK(t.every_state_has_failure_arc());
    CHECK(t.error_left_only_by_reset());
  }
  SUBCASE("a trap: c cannot get back") {
    constexpr auto arcs = std::to_array<arc<toy>>({
        {idle, a, "go"},
        {a, b, "go"},
        {b, c, "go"},
        {b, idle, "back"},
        {a, idle, "back"},
        {idle, broken, "fail", arc_kind::failure},
        {a, broken, "fail", arc_kind::failure},
        {b, broken, "fail", arc_kind::failure},
        {c, broken, "fail", arc_kind::failure},
        {broken, idle, "reset", arc_kind::reset},
    });
    constexpr fsm::table<toy, 5, arcs.size()> t{idle, broken, arcs};
    CHECK(t.every_state_reachable_from_initial());
    CHECK_FALSE(t.initial_reachable_from_every_state());
  }
  SUBCASE("a state that cannot fail, a failure arc marked normal, two ways out of error") {
    constexpr auto arcs = std::to_array<arc<toy>>({
        {idle, a, "go"},
        {a, b, "go"},
        {b, c, "go"},
        {c, idle, "home"},
        {idle, broken, "fail"},  // not marked failure
        {a, broken, "fail", arc_kind::failure},
        {b, broken, "fail", arc_kind::failure},
        {broken, idle, "reset", arc_kind::reset},
        {broken, a, "reset", arc_kind::reset},  // a second exit, and not to the initial state
    });
    constexpr fsm::table<toy, 5, arcs.size()> t{idle, broken, arcs};
    CHECK_FALSE(t.every_state_has_failure_arc());
    CHECK_FALSE(t.arc_kinds_consistent());
    CHECK_FALSE(t.error_left_only_by_reset());
  }
  SUBCASE("error left by a normal arc") {
    constexpr auto arcs = std::to_array<arc<toy>>({
        {idle, broken, "fail", arc_kind::failure},
        {broken, idle, "recover"},
    });
    constexpr fsm::table<toy, 5, arcs.size()> t{idle, broken, arcs};
    CHECK_FALSE(t.error_left_only_by_reset());
    CHECK_FALSE(t.every_state_reachable_from_initial());
  }
}
