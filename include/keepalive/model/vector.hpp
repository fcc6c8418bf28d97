// model/vector.hpp — an MSI-X vector handle whose TYPE is its state
// (fsm/vector.hpp). Only the arcs of fsm::vector_table have functions; any
// other transition does not compile. Move-only; a moved-from handle is empty.
// (Named msix_vector, not vector: keepalive::vector is the x86 vector number.)
//
// The record: the device's vector index (always), the IRTE index and guest
// vector (from setup until the IRTE is freed), the PID the IRTE posts into
// (POSTED; PRESERVED: the kept PID with SN set, none in masking mode;
// RECONNECTED: the new owner's PID, none without posting) and, while
// RECONNECTED, the old PID whose PIR is still to be drained.
//
// Fallible arcs return outcome<new handle, old handle> (errc::invalid): a PID
// that is not 64-byte aligned (connect, reconnect), a drain towards the wrong
// delivery (posted without a new PID, remapped with one). drain() picks the
// right one itself.
#pragma once

#include <cassert>
#include <cstdint>
#include <optional>
#include <utility>
#include <variant>

#include <keepalive/error.hpp>
#include <keepalive/fsm/vector.hpp>
#include <keepalive/model/detail/unique_state.hpp>
#include <keepalive/model/outcome.hpp>
#include <keepalive/types.hpp>

namespace keepalive::model {

using fsm::vector_state;

// A posted-interrupt descriptor is 64 bytes, 64-byte aligned (the IRTE holds
// its address bits 63:6).
inline constexpr std::uint64_t pid_alignment = 64;

[[nodiscard]] constexpr bool vector_holds_irte(vector_state s) noexcept {
  return s == vector_state::remapped || s == vector_state::posted || s == vector_state::preserved ||
         s == vector_state::reconnected;
}

// setup, connect, reconnect carry data; drain is checked against the record.
[[nodiscard]] constexpr bool vector_arc_takes_data(vector_state from, vector_state to) noexcept {
  return fsm::vector_allowed(from, to) &&
         ((from == vector_state::free && to == vector_state::remapped) ||
          (from == vector_state::remapped && to == vector_state::posted) ||
          (from == vector_state::preserved && to == vector_state::reconnected) || from == vector_state::reconnected) &&
         to != vector_state::error;
}

struct msix_vector_record {
  keepalive::msix_index index{};
  std::optional<keepalive::irte_index> irte{};
  keepalive::vector guest_vector{};
  std::optional<hpa> pid{};
  std::optional<hpa> old_pid{};
};

[[nodiscard]] constexpr bool pid_aligned(hpa p) noexcept { return p.value() % pid_alignment == 0; }

// A record fits state s (ERROR accepts whatever was left).
[[nodiscard]] constexpr bool well_formed(vector_state s, const msix_vector_record& r) noexcept {
  const bool pid_ok = !r.pid || pid_aligned(*r.pid);
  const bool old_ok = !r.old_pid || pid_aligned(*r.old_pid);
  switch (s) {
    case vector_state::free: return !r.irte && !r.pid && !r.old_pid && r.guest_vector == keepalive::vector{};
    case vector_state::remapped: return r.irte && !r.pid && !r.old_pid;
    case vector_state::posted: return r.irte && r.pid && pid_ok && !r.old_pid;
    case vector_state::preserved: return r.irte && pid_ok && !r.old_pid;
    case vector_state::reconnected: return r.irte && pid_ok && old_ok;
    case vector_state::error: return true;
  }
  return false;
}

namespace detail {
struct msix_vector_access;
}

template <vector_state S>
class msix_vector {
  static_assert(fsm::vector_table.in_range(S));

 public:
  static constexpr vector_state state = S;

  // Vector `index` of a device, before any setup.
  explicit msix_vector(keepalive::msix_index index) noexcept
    requires(S == vector_state::free)
      : core_{msix_vector_record{index, {}, {}, {}, {}}} {}
  msix_vector(msix_vector&&) noexcept = default;
  msix_vector& operator=(msix_vector&&) noexcept = default;
  msix_vector(const msix_vector&) = delete;
  msix_vector& operator=(const msix_vector&) = delete;
  ~msix_vector() = default;

  [[nodiscard]] bool valid() const noexcept { return core_.engaged(); }
  [[nodiscard]] const msix_vector_record& record() const noexcept { return core_.get(); }
  [[nodiscard]] keepalive::msix_index index() const noexcept { return core_.get().index; }
  [[nodiscard]] keepalive::irte_index irte() const noexcept
    requires(vector_holds_irte(S))
  {
    return core_.get().irte.value_or(keepalive::irte_index{});
  }
  [[nodiscard]] keepalive::vector guest_vector() const noexcept
    requires(vector_holds_irte(S))
  {
    return core_.get().guest_vector;
  }
  // POSTED: the descriptor the IRTE posts into.
  [[nodiscard]] hpa pid() const noexcept
    requires(S == vector_state::posted)
  {
    return core_.get().pid.value_or(hpa{});
  }
  // PRESERVED: the kept descriptor (SN set); none: masking mode.
  [[nodiscard]] std::optional<hpa> kept_pid() const noexcept
    requires(S == vector_state::preserved)
  {
    return core_.get().pid;
  }
  [[nodiscard]] bool masked() const noexcept
    requires(S == vector_state::preserved)
  {
    return !core_.get().pid;
  }
  // RECONNECTED: the new owner's descriptor (none: no posting) and the one to drain.
  [[nodiscard]] std::optional<hpa> new_pid() const noexcept
    requires(S == vector_state::reconnected)
  {
    return core_.get().pid;
  }
  [[nodiscard]] std::optional<hpa> old_pid() const noexcept
    requires(S == vector_state::reconnected)
  {
    return core_.get().old_pid;
  }

 private:
  friend struct detail::msix_vector_access;
  explicit msix_vector(detail::unique_state<msix_vector_record> core) noexcept : core_{std::move(core)} {}
  detail::unique_state<msix_vector_record> core_;
};

namespace detail {
struct msix_vector_access {
  template <vector_state S>
  static msix_vector<S> make(unique_state<msix_vector_record> core) noexcept {
    return msix_vector<S>{std::move(core)};
  }
  template <vector_state S>
  static unique_state<msix_vector_record> take(msix_vector<S>&& v) noexcept {
    assert(v.valid() && "transition of a moved-from vector handle");
    return std::move(v.core_);
  }
};
}  // namespace detail

// The trust boundary: a handle for a vector the kernel reports in state S.
template <vector_state S>
[[nodiscard]] result<msix_vector<S>> observed(const msix_vector_record& r) {
  if (!well_formed(S, r)) return {errc::invalid, "vector record does not fit its state"};
  return detail::msix_vector_access::make<S>(detail::unique_state<msix_vector_record>{r});
}

// Every arc that carries no data: disconnect, teardown, preserve, discard,
// fail, reset.
template <vector_state To, vector_state From>
  requires(fsm::vector_allowed(From, To) && !vector_arc_takes_data(From, To))
[[nodiscard]] msix_vector<To> transition(msix_vector<From>&& v) noexcept {
  auto core = detail::msix_vector_access::take(std::move(v));
  if (core.engaged()) {
    msix_vector_record& r = core.get();
    if constexpr (To == vector_state::free) r = msix_vector_record{r.index, {}, {}, {}, {}};
    if constexpr (To == vector_state::remapped) r.pid.reset();  // disconnect
  }
  return detail::msix_vector_access::make<To>(std::move(core));
}

// setup: FREE -> REMAPPED with a freshly allocated IRTE.
template <vector_state To>
  requires(To == vector_state::remapped && fsm::vector_allowed(vector_state::free, To))
[[nodiscard]] msix_vector<To> transition(msix_vector<vector_state::free>&& v, keepalive::irte_index irte,
                                         keepalive::vector guest_vector) noexcept {
  auto core = detail::msix_vector_access::take(std::move(v));
  if (core.engaged()) {
    core.get().irte = irte;
    core.get().guest_vector = guest_vector;
  }
  return detail::msix_vector_access::make<To>(std::move(core));
}

// connect: REMAPPED -> POSTED into `pid`.
template <vector_state To>
  requires(To == vector_state::posted && fsm::vector_allowed(vector_state::remapped, To))
[[nodiscard]] outcome<msix_vector<To>, msix_vector<vector_state::remapped>> transition(
    msix_vector<vector_state::remapped>&& v, hpa pid) {
  if (!pid_aligned(pid)) return {std::move(v), error{errc::invalid, "connect: PID not 64-byte aligned"}};
  auto core = detail::msix_vector_access::take(std::move(v));
  if (core.engaged()) core.get().pid = pid;
  return detail::msix_vector_access::make<To>(std::move(core));
}

// reconnect: PRESERVED -> RECONNECTED, the kept IRTE re-pointed to `new_pid`
// (none: the new owner has no posting).
template <vector_state To>
  requires(To == vector_state::reconnected && fsm::vector_allowed(vector_state::preserved, To))
[[nodiscard]] outcome<msix_vector<To>, msix_vector<vector_state::preserved>> transition(
    msix_vector<vector_state::preserved>&& v, std::optional<hpa> new_pid) {
  if (new_pid && !pid_aligned(*new_pid))
    return {std::move(v), error{errc::invalid, "reconnect: PID not 64-byte aligned"}};
  auto core = detail::msix_vector_access::take(std::move(v));
  if (core.engaged()) {
    core.get().old_pid = core.get().pid;
    core.get().pid = new_pid;
  }
  return detail::msix_vector_access::make<To>(std::move(core));
}

// drain: RECONNECTED -> POSTED (needs a new PID) or -> REMAPPED (needs none).
template <vector_state To>
  requires((To == vector_state::posted || To == vector_state::remapped) &&
           fsm::vector_allowed(vector_state::reconnected, To))
[[nodiscard]] outcome<msix_vector<To>, msix_vector<vector_state::reconnected>> transition(
    msix_vector<vector_state::reconnected>&& v) {
  const bool posting = v.record().pid.has_value();
  if (posting != (To == vector_state::posted))
    return {std::move(v), error{errc::invalid, posting ? "drain: the new owner posts" : "drain: no PID to post into"}};
  auto core = detail::msix_vector_access::take(std::move(v));
  if (core.engaged()) core.get().old_pid.reset();
  return detail::msix_vector_access::make<To>(std::move(core));
}

// ---- the arcs by name ----

[[nodiscard]] inline msix_vector<vector_state::remapped> setup(msix_vector<vector_state::free>&& v,
                                                               keepalive::irte_index irte,
                                                               keepalive::vector guest_vector) noexcept {
  return transition<vector_state::remapped>(std::move(v), irte, guest_vector);
}

[[nodiscard]] inline outcome<msix_vector<vector_state::posted>, msix_vector<vector_state::remapped>> connect(
    msix_vector<vector_state::remapped>&& v, hpa pid) {
  return transition<vector_state::posted>(std::move(v), pid);
}

[[nodiscard]] inline msix_vector<vector_state::remapped> disconnect(msix_vector<vector_state::posted>&& v) noexcept {
  return transition<vector_state::remapped>(std::move(v));
}

// REMAPPED, POSTED -> FREE: ordinary release, IRTE freed.
template <vector_state From>
  requires(From == vector_state::remapped || From == vector_state::posted)
[[nodiscard]] msix_vector<vector_state::free> teardown(msix_vector<From>&& v) noexcept {
  return transition<vector_state::free>(std::move(v));
}

// REMAPPED, POSTED -> PRESERVED: keepalive close.
template <vector_state From>
  requires(From == vector_state::remapped || From == vector_state::posted)
[[nodiscard]] msix_vector<vector_state::preserved> preserve(msix_vector<From>&& v) noexcept {
  return transition<vector_state::preserved>(std::move(v));
}

[[nodiscard]] inline outcome<msix_vector<vector_state::reconnected>, msix_vector<vector_state::preserved>> reconnect(
    msix_vector<vector_state::preserved>&& v, std::optional<hpa> new_pid) {
  return transition<vector_state::reconnected>(std::move(v), new_pid);
}

// RECONNECTED -> POSTED when the new owner posts, -> REMAPPED otherwise.
[[nodiscard]] inline std::variant<msix_vector<vector_state::posted>, msix_vector<vector_state::remapped>> drain(
    msix_vector<vector_state::reconnected>&& v) {
  using drained = std::variant<msix_vector<vector_state::posted>, msix_vector<vector_state::remapped>>;
  if (v.record().pid) return drained{std::in_place_index<0>, transition<vector_state::posted>(std::move(v)).value()};
  return drained{std::in_place_index<1>, transition<vector_state::remapped>(std::move(v)).value()};
}

// PRESERVED -> FREE: device reset or keepalive discarded.
[[nodiscard]] inline msix_vector<vector_state::free> discard(msix_vector<vector_state::preserved>&& v) noexcept {
  return transition<vector_state::free>(std::move(v));
}

template <vector_state From>
  requires(From != vector_state::error)
[[nodiscard]] msix_vector<vector_state::error> fail(msix_vector<From>&& v) noexcept {
  return transition<vector_state::error>(std::move(v));
}

[[nodiscard]] inline msix_vector<vector_state::free> reset(msix_vector<vector_state::error>&& v) noexcept {
  return transition<vector_state::free>(std::move(v));
}

}  // namespace keepalive::model
