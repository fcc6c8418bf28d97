// One checker for the hand-written expectations of every state machine: the
// grids and arc lists stay written out by hand in each test file (they are the
// independent oracle); only the loops that compare them with a table live here.
#pragma once

#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <string_view>

#include <keepalive/error.hpp>
#include <keepalive/fsm/table.hpp>

namespace keepalive::fsm_test {

template <class State>
struct named_arc {
  State from;
  State to;
  std::string_view name;
};

template <class State>
constexpr State st(std::size_t i) { return static_cast<State>(i); }

// Every listed arc is allowed, checks ok, leads to its target and carries its name.
template <class Table, class State, std::size_t A>
void check_arcs(const Table& table, std::size_t table_arc_count, const std::array<named_arc<State>, A>& arcs) {
  CHECK(table_arc_count == A);
  for (const named_arc<State>& a : arcs) {
    CAPTURE(name(a.from));
    CAPTURE(name(a.to));
    CHECK(allowed(a.from, a.to));
    CHECK(check(a.from, a.to) == errc::ok);
    CHECK(table.direct(a.from, a.to) == a.to);
    CHECK(table.arc_name(a.from, a.to) == a.name);
  }
}

// Row = from, column = to. Letters: o normal arc, r reset arc, f failure arc,
// b refused with EBUSY, n refused with ENOENT. The number of arcs in the grid
// must equal the number listed by hand.
template <class State, class Table, std::size_t N>
void check_grid(const Table& table, const std::array<std::string_view, N>& grid, std::size_t listed_arcs) {
  std::size_t arcs = 0;
  for (std::size_t f = 0; f < N; ++f) {
    REQUIRE(grid[f].size() == N);
    for (std::size_t t = 0; t < N; ++t) {
      const State from = st<State>(f);
      const State to = st<State>(t);
      const char want = grid[f][t];
      CAPTURE(name(from));
      CAPTURE(name(to));
      CAPTURE(want);
      const bool arc = want == 'o' || want == 'r' || want == 'f';
      arcs += arc ? 1 : 0;
      CHECK(allowed(from, to) == arc);
      CHECK(table.direct(from, to) == (arc ? to : table.error()));
      switch (want) {
        case 'o': CHECK(table.kind(from, to) == fsm::arc_kind::normal); break;
        case 'r': CHECK(table.kind(from, to) == fsm::arc_kind::reset); break;
        case 'f': CHECK(table.kind(from, to) == fsm::arc_kind::failure); break;
        default: break;
      }
      const errc code = arc ? errc::ok : want == 'n' ? errc::not_found : errc::busy;
      CHECK(check(from, to) == code);
    }
  }
  CHECK(arcs == listed_arcs);
}

// next_hop for every pair against a hand-worked grid of state letters.
template <class State, std::size_t N, class FromLetter>
void check_next_hop(const std::array<std::string_view, N>& grid, FromLetter from_letter) {
  for (std::size_t f = 0; f < N; ++f)
    for (std::size_t t = 0; t < N; ++t) {
      CAPTURE(name(st<State>(f)));
      CAPTURE(name(st<State>(t)));
      CHECK(next_hop(st<State>(f), st<State>(t)) == from_letter(grid[f][t]));
    }
}

template <class Table>
void check_properties(const Table& table) {
  CHECK(table.every_state_reachable_from_initial());
  CHECK(table.initial_reachable_from_every_state());
  CHECK(table.every_state_has_failure_arc());
  CHECK(table.error_left_only_by_reset());
  CHECK(table.arc_kinds_consistent());
  CHECK(table.blocked_arcs_map_to_error());
  CHECK(table.routes_follow_arcs());
}

// Names in enum order; one past the last value is "invalid" and checks EINVAL.
template <class State, std::size_t N>
void check_names(const std::array<std::string_view, N>& names) {
  for (std::size_t s = 0; s < N; ++s) CHECK(name(st<State>(s)) == names[s]);
  const State stray = st<State>(N);
  CHECK(name(stray) == "invalid");
  CHECK(check(stray, st<State>(0)) == errc::invalid);
  CHECK(check(st<State>(0), stray) == errc::invalid);
  CHECK_FALSE(allowed(stray, st<State>(N - 1)));
}

}  // namespace keepalive::fsm_test
