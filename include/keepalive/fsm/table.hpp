// fsm/table.hpp — compile-time machinery shared by every keepalive state machine.
//
// A machine is N states (an enum whose values are 0..N-1), an initial state, an
// error state and a list of arcs {from, to, name, kind}. From that list alone,
// at compile time, table<> derives:
//  - allowed(from, to): the request from -> to is one listed arc;
//  - direct(from, to):  `to` when allowed, the error state otherwise;
//  - check(from, to):   errc::ok when allowed, otherwise the errno the ABI
//                       returns for that refused request (errc::busy unless
//                       the machine overrides the pair);
//  - next_hop(from, to), hops(from, to), reachable(from, to): a route planner
//    in the manner of VFIO's vfio_mig_get_next_state().
//
// Arc kinds. `normal` arcs are the machine's business. `failure` arcs lead to
// the error state and are taken by the kernel when it cannot keep a promise.
// `reset` arcs are destructive (FLR, IRTEs freed, domain torn down) and lead
// back to the initial state; the error state is left by exactly one of them.
//
// Routes. next_hop(from, to) is the first state on a shortest path that uses
// normal arcs only, so a planner walking next_hop never resets or fails
// anything to get somewhere else. When no normal path exists, a direct
// failure or reset arc is the route (the request names that very arc; this is
// how `error` and, from error, the initial state are reached). Otherwise the
// target is unreachable and next_hop returns the error state, like VFIO's
// table: a caller walking the route stops when next_hop returns the error
// state and the target is not the error state. next_hop(s, s) == s.
// Walking next_hop from `from` reaches `to` in exactly hops(from, to) arcs;
// reachable(from, to) is hops(from, to) != no_route.
//
// A malformed arc list (a state out of range, a self-arc, an arc listed twice,
// an unnamed arc, a refusal override on an allowed pair or equal to errc::ok)
// makes the table's construction not a constant expression: it does not
// compile.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <type_traits>

#include <keepalive/error.hpp>

namespace keepalive::fsm {

enum class arc_kind : std::uint8_t {
  normal,   // the machine's ordinary business; the only arcs routes go through
  failure,  // to the error state, kernel-triggered
  reset,    // destructive, back to the initial state
};

template <typename State>
struct arc {
  State from;
  State to;
  std::string_view name;
  arc_kind kind = arc_kind::normal;
};

// The errno a refused request from -> to returns, when not errc::busy.
template <typename State>
struct refusal {
  State from;
  State to;
  errc code;
};

inline constexpr std::uint8_t no_route = std::numeric_limits<std::uint8_t>::max();

namespace detail {
// Not constexpr on failure: a malformed arc list fails to compile here.
constexpr void require(bool ok, const char* why) {
  if (!ok) throw std::invalid_argument(why);
}
}  // namespace detail

template <typename State, std::size_t N, std::size_t A, std::size_t R = 0>
class table {
  static_assert(std::is_enum_v<State>, "states are an enum");
  static_assert(N >= 2 && N < no_route, "between 2 and 254 states");

 public:
  using state_type = State;
  static constexpr std::size_t state_count = N;

  constexpr table(State initial, State error, const std::array<arc<State>, A>& arcs,
                  const std::array<refusal<State>, R>& refusals = {})
      : initial_{initial}, error_{error}, arcs_{arcs} {
    detail::require(in_range(initial) && in_range(error) && initial != error,
                    "initial and error must be two distinct states");
    for (auto& row : arc_of_) row.fill(no_arc);
    for (std::size_t i = 0; i < A; ++i) {
      const arc<State>& a = arcs_[i];
      detail::require(in_range(a.from) && in_range(a.to), "arc state out of range");
      detail::require(a.from != a.to, "self-arc: staying put is not a transition");
      detail::require(!a.name.empty(), "unnamed arc");
      detail::require(arc_of_[ix(a.from)][ix(a.to)] == no_arc, "arc listed twice");
      arc_of_[ix(a.from)][ix(a.to)] = static_cast<std::uint8_t>(i);
    }
    for (std::size_t f = 0; f < N; ++f)
      for (std::size_t t = 0; t < N; ++t) refusal_[f][t] = arc_of_[f][t] == no_arc ? errc::busy : errc::ok;
    for (const refusal<State>& r : refusals) {
      detail::require(in_range(r.from) && in_range(r.to), "refusal state out of range");
      detail::require(arc_of_[ix(r.from)][ix(r.to)] == no_arc, "refusal override on an allowed arc");
      detail::require(r.code != errc::ok, "a refusal must be an error");
      detail::require(refusal_[ix(r.from)][ix(r.to)] == errc::busy, "refusal listed twice");
      refusal_[ix(r.from)][ix(r.to)] = r.code;
    }
    plan_routes();
  }

  [[nodiscard]] constexpr State initial() const noexcept { return initial_; }
  [[nodiscard]] constexpr State error() const noexcept { return error_; }
  [[nodiscard]] constexpr const std::array<arc<State>, A>& arcs() const noexcept { return arcs_; }
  [[nodiscard]] static constexpr bool in_range(State s) noexcept { return ix(s) < N; }

  [[nodiscard]] constexpr bool allowed(State from, State to) const noexcept {
    return in_range(from) && in_range(to) && arc_of_[ix(from)][ix(to)] != no_arc;
  }
  [[nodiscard]] constexpr State direct(State from, State to) const noexcept {
    return allowed(from, to) ? to : error_;
  }
  // errc::ok for a listed arc; the refusal errno otherwise; errc::invalid for
  // a value that is not a state (it came from outside).
  [[nodiscard]] constexpr errc check(State from, State to) const noexcept {
    if (!in_range(from) || !in_range(to)) return errc::invalid;
    return refusal_[ix(from)][ix(to)];
  }
  [[nodiscard]] constexpr std::string_view arc_name(State from, State to) const noexcept {
    return allowed(from, to) ? arcs_[arc_of_[ix(from)][ix(to)]].name : std::string_view{};
  }
  [[nodiscard]] constexpr arc_kind kind(State from, State to) const noexcept {
    return allowed(from, to) ? arcs_[arc_of_[ix(from)][ix(to)]].kind : arc_kind::normal;
  }
  [[nodiscard]] constexpr State next_hop(State from, State to) const noexcept {
    if (!in_range(from) || !in_range(to)) return error_;
    return next_[ix(from)][ix(to)];
  }
  [[nodiscard]] constexpr std::uint8_t hops(State from, State to) const noexcept {
    if (!in_range(from) || !in_range(to)) return no_route;
    return hops_[ix(from)][ix(to)];
  }
  [[nodiscard]] constexpr bool reachable(State from, State to) const noexcept { return hops(from, to) != no_route; }

  // ---- properties, each meant for a static_assert in the machine's header ----

  [[nodiscard]] constexpr bool every_state_reachable_from_initial() const noexcept {
    for (std::size_t s = 0; s < N; ++s)
      if (!reachable(initial_, st(s))) return false;
    return true;
  }
  // Nothing is a trap: from every state (error included, via reset) the
  // initial state can be reached.
  [[nodiscard]] constexpr bool initial_reachable_from_every_state() const noexcept {
    for (std::size_t s = 0; s < N; ++s)
      if (!reachable(st(s), initial_)) return false;
    return true;
  }
  [[nodiscard]] constexpr bool every_state_has_failure_arc() const noexcept {
    for (std::size_t s = 0; s < N; ++s)
      if (st(s) != error_ && (!allowed(st(s), error_) || kind(st(s), error_) != arc_kind::failure)) return false;
    return true;
  }
  [[nodiscard]] constexpr bool error_left_only_by_reset() const noexcept {
    std::size_t leaving = 0;
    for (const arc<State>& a : arcs_) {
      if (a.from != error_) continue;
      ++leaving;
      if (a.kind != arc_kind::reset) return false;
    }
    return leaving == 1;
  }
  // failure <=> into the error state; every reset lands in the initial state.
  [[nodiscard]] constexpr bool arc_kinds_consistent() const noexcept {
    for (const arc<State>& a : arcs_) {
      if ((a.kind == arc_kind::failure) != (a.to == error_)) return false;
      if (a.kind == arc_kind::reset && a.to != initial_) return false;
    }
    return true;
  }
  [[nodiscard]] constexpr bool blocked_arcs_map_to_error() const noexcept {
    for (std::size_t f = 0; f < N; ++f)
      for (std::size_t t = 0; t < N; ++t) {
        const bool ok = allowed(st(f), st(t));
        if (direct(st(f), st(t)) != (ok ? st(t) : error_)) return false;
        if ((check(st(f), st(t)) == errc::ok) != ok) return false;
      }
    return true;
  }
  // Every hop is an arc, walking next_hop reaches the target in hops() arcs,
  // and an unreachable target's hop is the error state.
  [[nodiscard]] constexpr bool routes_follow_arcs() const noexcept {
    for (std::size_t f = 0; f < N; ++f)
      for (std::size_t t = 0; t < N; ++t) {
        const std::uint8_t h = hops_[f][t];
        if (h == no_route) {
          if (next_[f][t] != error_) return false;
          continue;
        }
        State at = st(f);
        for (std::uint8_t i = 0; i < h; ++i) {
          const State hop = next_hop(at, st(t));
          if (!allowed(at, hop)) return false;
          at = hop;
        }
        if (at != st(t)) return false;
      }
    return true;
  }

 private:
  static constexpr std::uint8_t no_arc = std::numeric_limits<std::uint8_t>::max();
  static_assert(A < no_arc, "too many arcs");

  static constexpr std::size_t ix(State s) noexcept { return static_cast<std::size_t>(s); }
  static constexpr State st(std::size_t i) noexcept { return static_cast<State>(i); }

  // Breadth-first search over normal arcs from every state; a direct failure
  // or reset arc only when no normal path exists.
  constexpr void plan_routes() {
    for (std::size_t f = 0; f < N; ++f) {
      std::array<std::uint8_t, N> dist{};
      std::array<State, N> first{};
      dist.fill(no_route);
      first.fill(error_);
      std::array<std::size_t, N> queue{};
      std::size_t head = 0;
      std::size_t tail = 0;
      dist[f] = 0;
      first[f] = st(f);
      queue[tail++] = f;
      while (head < tail) {
        const std::size_t u = queue[head++];
        for (std::size_t v = 0; v < N; ++v) {
          if (dist[v] != no_route || arc_of_[u][v] == no_arc) continue;
          if (arcs_[arc_of_[u][v]].kind != arc_kind::normal) continue;
          dist[v] = static_cast<std::uint8_t>(dist[u] + 1);
          first[v] = u == f ? st(v) : first[u];
          queue[tail++] = v;
        }
      }
      for (std::size_t t = 0; t < N; ++t) {
        if (dist[t] != no_route) {
          next_[f][t] = first[t];
          hops_[f][t] = dist[t];
        } else if (arc_of_[f][t] != no_arc) {
          next_[f][t] = st(t);
          hops_[f][t] = 1;
        } else {
          next_[f][t] = error_;
          hops_[f][t] = no_route;
        }
      }
    }
  }

  State initial_;
  State error_;
  std::array<arc<State>, A> arcs_;
  std::array<std::array<std::uint8_t, N>, N> arc_of_{};
  std::array<std::array<errc, N>, N> refusal_{};
  std::array<std::array<State, N>, N> next_{};
  std::array<std::array<std::uint8_t, N>, N> hops_{};
};

}  // namespace keepalive::fsm
