// model/device.hpp — a device handle whose TYPE is its lifecycle state
// (fsm/device.hpp). Only the arcs of fsm::device_table have functions; any
// other transition does not compile. Handles are move-only: a transition
// consumes its argument, and a moved-from handle is empty (valid() is false;
// using it asserts).
//
//   device<running> d{bdf{0, 0, 4, 0}};
//   auto kept = enter(std::move(d), tok);           // outcome: refused for a nil token
//   device<ownerless> o = close(std::move(kept).value());
//   auto r = reclaim(std::move(o), presented);       // refused: access_denied, o given back
//   device<running> back = leave(std::move(r).value());
//
// Fallible arcs (enter, reclaim) return outcome<new handle, old handle>
// (model/outcome.hpp): on refusal the caller gets its handle back unchanged.
// leave takes no token: holding the typed handle is the proof of ownership;
// the ABI layer sends handle.token().
#pragma once

#include <cassert>
#include <utility>

#include <keepalive/error.hpp>
#include <keepalive/fsm/device.hpp>
#include <keepalive/model/detail/unique_state.hpp>
#include <keepalive/model/outcome.hpp>
#include <keepalive/types.hpp>

namespace keepalive::model {

using fsm::device_state;

// A token is recorded by enter and forgotten by leave, reset and failure.
[[nodiscard]] constexpr bool device_holds_token(device_state s) noexcept {
  switch (s) {
    case device_state::kept_alive:
    case device_state::ownerless:
    case device_state::reclaimed:
    case device_state::frozen:
    case device_state::restored: return true;
    case device_state::running:
    case device_state::error: break;
  }
  return false;
}

// The arcs that take a token: enter records it, reclaim presents it.
[[nodiscard]] constexpr bool device_arc_takes_token(device_state from, device_state to) noexcept {
  return fsm::device_allowed(from, to) && (to == device_state::kept_alive || to == device_state::reclaimed);
}

struct device_record {
  keepalive::bdf address{};
  keepalive::token token{};
};

// A record fits state s: a token exactly in the states that hold one.
[[nodiscard]] constexpr bool well_formed(device_state s, const device_record& r) noexcept {
  return fsm::device_table.in_range(s) && device_holds_token(s) == !r.token.is_nil();
}

namespace detail {
struct device_access;
}

template <device_state S>
class device {
  static_assert(fsm::device_table.in_range(S));

 public:
  static constexpr device_state state = S;

  // An ordinary device its VMM opened.
  explicit device(keepalive::bdf address) noexcept
    requires(S == device_state::running)
      : core_{device_record{address, {}}} {}
  device(device&&) noexcept = default;
  device& operator=(device&&) noexcept = default;
  device(const device&) = delete;
  device& operator=(const device&) = delete;
  ~device() = default;

  [[nodiscard]] bool valid() const noexcept { return core_.engaged(); }
  [[nodiscard]] const device_record& record() const noexcept { return core_.get(); }
  [[nodiscard]] keepalive::bdf bdf() const noexcept { return core_.get().address; }
  [[nodiscard]] const keepalive::token& token() const noexcept
    requires(device_holds_token(S))
  {
    return core_.get().token;
  }

 private:
  friend struct detail::device_access;
  explicit device(detail::unique_state<device_record> core) noexcept : core_{std::move(core)} {}
  detail::unique_state<device_record> core_;
};

namespace detail {
struct device_access {
  template <device_state S>
  static device<S> make(unique_state<device_record> core) noexcept {
    return device<S>{std::move(core)};
  }
  template <device_state S>
  static unique_state<device_record> take(device<S>&& d) noexcept {
    assert(d.valid() && "transition of a moved-from device handle");
    return std::move(d.core_);
  }
};
}  // namespace detail

// The trust boundary: a handle for a device the kernel reports in state S
// (GET_STATUS, LIST_DEVICES; a kernel rebuilding from its handover image).
// errc::invalid when the record does not fit S.
template <device_state S>
[[nodiscard]] result<device<S>> observed(const device_record& r) {
  if (!well_formed(S, r)) return {errc::invalid, "device record does not fit its state"};
  return detail::device_access::make<S>(detail::unique_state<device_record>{r});
}

// Every arc that takes no token. The token is forgotten on the way to a state
// that holds none.
template <device_state To, device_state From>
  requires(fsm::device_allowed(From, To) && !device_arc_takes_token(From, To))
[[nodiscard]] device<To> transition(device<From>&& d) noexcept {
  auto core = detail::device_access::take(std::move(d));
  if constexpr (!device_holds_token(To)) {
    if (core.engaged()) core.get().token = keepalive::token{};
  }
  return detail::device_access::make<To>(std::move(core));
}

// enter (records `t`; refused with errc::invalid for the nil token) and
// reclaim (presents `t`; refused with errc::access_denied unless it is the
// recorded token). State is checked before token: the type already did.
template <device_state To, device_state From>
  requires(device_arc_takes_token(From, To))
[[nodiscard]] outcome<device<To>, device<From>> transition(device<From>&& d, const keepalive::token& t) {
  if constexpr (To == device_state::kept_alive) {
    if (t.is_nil()) return {std::move(d), error{errc::invalid, "enter: all-zero token"}};
  } else {
    if (t.is_nil() || !(t == d.record().token))
      return {std::move(d), error{errc::access_denied, "reclaim: wrong or missing token"}};
  }
  auto core = detail::device_access::take(std::move(d));
  if constexpr (To == device_state::kept_alive) {
    if (core.engaged()) core.get().token = t;
  }
  return detail::device_access::make<To>(std::move(core));
}

// ---- the arcs by name ----

// RUNNING -> KEPT_ALIVE.
[[nodiscard]] inline outcome<device<device_state::kept_alive>, device<device_state::running>> enter(
    device<device_state::running>&& d, const keepalive::token& t) {
  return transition<device_state::kept_alive>(std::move(d), t);
}

// KEPT_ALIVE -> RUNNING (the owner changes its mind), RECLAIMED -> RUNNING
// (vectors re-attached: "set-keepalive off").
template <device_state From>
  requires(From == device_state::kept_alive || From == device_state::reclaimed)
[[nodiscard]] device<device_state::running> leave(device<From>&& d) noexcept {
  return transition<device_state::running>(std::move(d));
}

// KEPT_ALIVE -> OWNERLESS, RECLAIMED -> OWNERLESS: the owner closed or died.
template <device_state From>
  requires(From == device_state::kept_alive || From == device_state::reclaimed)
[[nodiscard]] device<device_state::ownerless> close(device<From>&& d) noexcept {
  return transition<device_state::ownerless>(std::move(d));
}

// OWNERLESS -> RECLAIMED, RESTORED -> RECLAIMED: open with the token.
template <device_state From>
  requires(From == device_state::ownerless || From == device_state::restored)
[[nodiscard]] outcome<device<device_state::reclaimed>, device<From>> reclaim(device<From>&& d,
                                                                            const keepalive::token& presented) {
  return transition<device_state::reclaimed>(std::move(d), presented);
}

// OWNERLESS -> FROZEN, RESTORED -> FROZEN.
template <device_state From>
  requires(From == device_state::ownerless || From == device_state::restored)
[[nodiscard]] device<device_state::frozen> prepare_stage2(device<From>&& d) noexcept {
  return transition<device_state::frozen>(std::move(d));
}

// FROZEN -> OWNERLESS.
[[nodiscard]] inline device<device_state::ownerless> abort_stage2(device<device_state::frozen>&& d) noexcept {
  return transition<device_state::ownerless>(std::move(d));
}

// FROZEN -> RESTORED.
[[nodiscard]] inline device<device_state::restored> finish_kexec(device<device_state::frozen>&& d) noexcept {
  return transition<device_state::restored>(std::move(d));
}

// OWNERLESS, RESTORED, ERROR -> RUNNING: FLR, IRTEs freed, domain torn down.
template <device_state From>
  requires(From == device_state::ownerless || From == device_state::restored || From == device_state::error)
[[nodiscard]] device<device_state::running> reset(device<From>&& d) noexcept {
  return transition<device_state::running>(std::move(d));
}

// Any state but ERROR -> ERROR.
template <device_state From>
  requires(From != device_state::error)
[[nodiscard]] device<device_state::error> fail(device<From>&& d) noexcept {
  return transition<device_state::error>(std::move(d));
}

}  // namespace keepalive::model
