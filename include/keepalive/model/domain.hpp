// model/domain.hpp — an IOMMU domain handle whose TYPE is its state
// (fsm/domain.hpp). Only the arcs of fsm::domain_table have functions; any
// other transition does not compile. Move-only; a moved-from handle is empty.
//
// The record, from attach until the domain is freed: its DID, the hpa of its
// top-level second-level table (the context entry's SLPTPTR) and its number
// of paging levels (3, 4 or 5: 39-, 48- or 57-bit, context AW 1, 2, 3).
// attach is the one fallible arc: errc::invalid for DID 0 (Linux reserves
// it), a table root not 4 KiB aligned, or another number of levels.
#pragma once

#include <cassert>
#include <cstdint>
#include <utility>

#include <keepalive/error.hpp>
#include <keepalive/fsm/domain.hpp>
#include <keepalive/model/detail/unique_state.hpp>
#include <keepalive/model/outcome.hpp>
#include <keepalive/types.hpp>

namespace keepalive::model {

using fsm::domain_state;

inline constexpr std::uint64_t table_alignment = 4096;

[[nodiscard]] constexpr bool domain_holds_tables(domain_state s) noexcept {
  return s == domain_state::attached || s == domain_state::preserved || s == domain_state::adopted;
}

// attach carries the layout; every other arc carries nothing.
[[nodiscard]] constexpr bool domain_arc_takes_data(domain_state from, domain_state to) noexcept {
  return fsm::domain_allowed(from, to) && from == domain_state::none && to == domain_state::attached;
}

struct domain_record {
  keepalive::domain_id did{};
  hpa table_root{};
  std::uint8_t levels{};
};

[[nodiscard]] constexpr bool valid_domain_layout(keepalive::domain_id did, hpa table_root, std::uint8_t levels) noexcept {
  return did.value() != 0 && table_root.value() % table_alignment == 0 && levels >= 3 && levels <= 5;
}

// A record fits state s (ERROR accepts whatever was left).
[[nodiscard]] constexpr bool well_formed(domain_state s, const domain_record& r) noexcept {
  switch (s) {
    case domain_state::none: return r.did.value() == 0 && r.table_root.value() == 0 && r.levels == 0;
    case domain_state::attached:
    case domain_state::preserved:
    case domain_state::adopted: return valid_domain_layout(r.did, r.table_root, r.levels);
    case domain_state::error: return true;
  }
  return false;
}

namespace detail {
struct domain_access;
}

template <domain_state S>
class domain {
  static_assert(fsm::domain_table.in_range(S));

 public:
  static constexpr domain_state state = S;

  // No domain yet.
  domain() noexcept
    requires(S == domain_state::none)
      : core_{domain_record{}} {}
  domain(domain&&) noexcept = default;
  domain& operator=(domain&&) noexcept = default;
  domain(const domain&) = delete;
  domain& operator=(const domain&) = delete;
  ~domain() = default;

  [[nodiscard]] bool valid() const noexcept { return core_.engaged(); }
  [[nodiscard]] const domain_record& record() const noexcept { return core_.get(); }
  [[nodiscard]] keepalive::domain_id did() const noexcept
    requires(domain_holds_tables(S))
  {
    return core_.get().did;
  }
  [[nodiscard]] hpa table_root() const noexcept
    requires(domain_holds_tables(S))
  {
    return core_.get().table_root;
  }
  [[nodiscard]] std::uint8_t levels() const noexcept
    requires(domain_holds_tables(S))
  {
    return core_.get().levels;
  }

 private:
  friend struct detail::domain_access;
  explicit domain(detail::unique_state<domain_record> core) noexcept : core_{std::move(core)} {}
  detail::unique_state<domain_record> core_;
};

namespace detail {
struct domain_access {
  template <domain_state S>
  static domain<S> make(unique_state<domain_record> core) noexcept {
    return domain<S>{std::move(core)};
  }
  template <domain_state S>
  static unique_state<domain_record> take(domain<S>&& d) noexcept {
    assert(d.valid() && "transition of a moved-from domain handle");
    return std::move(d.core_);
  }
};
}  // namespace detail

// The trust boundary: a handle for a domain the kernel reports in state S.
template <domain_state S>
[[nodiscard]] result<domain<S>> observed(const domain_record& r) {
  if (!well_formed(S, r)) return {errc::invalid, "domain record does not fit its state"};
  return detail::domain_access::make<S>(detail::unique_state<domain_record>{r});
}

// Every arc but attach. Arriving in NONE forgets the layout.
template <domain_state To, domain_state From>
  requires(fsm::domain_allowed(From, To) && !domain_arc_takes_data(From, To))
[[nodiscard]] domain<To> transition(domain<From>&& d) noexcept {
  auto core = detail::domain_access::take(std::move(d));
  if constexpr (To == domain_state::none) {
    if (core.engaged()) core.get() = domain_record{};
  }
  return detail::domain_access::make<To>(std::move(core));
}

// attach: NONE -> ATTACHED.
template <domain_state To>
  requires(To == domain_state::attached && fsm::domain_allowed(domain_state::none, To))
[[nodiscard]] outcome<domain<To>, domain<domain_state::none>> transition(domain<domain_state::none>&& d,
                                                                         keepalive::domain_id did, hpa table_root,
                                                                         std::uint8_t levels) {
  if (!valid_domain_layout(did, table_root, levels))
    return {std::move(d), error{errc::invalid, "attach: DID 0, unaligned table root or unsupported levels"}};
  auto core = detail::domain_access::take(std::move(d));
  if (core.engaged()) core.get() = domain_record{did, table_root, levels};
  return detail::domain_access::make<To>(std::move(core));
}

// ---- the arcs by name ----

[[nodiscard]] inline outcome<domain<domain_state::attached>, domain<domain_state::none>> attach(
    domain<domain_state::none>&& d, keepalive::domain_id did, hpa table_root, std::uint8_t levels) {
  return transition<domain_state::attached>(std::move(d), did, table_root, levels);
}

// ATTACHED -> NONE: tables freed, DID released.
[[nodiscard]] inline domain<domain_state::none> detach(domain<domain_state::attached>&& d) noexcept {
  return transition<domain_state::none>(std::move(d));
}

// ATTACHED -> PRESERVED (keepalive close), ADOPTED -> PRESERVED (new owner died).
template <domain_state From>
  requires(From == domain_state::attached || From == domain_state::adopted)
[[nodiscard]] domain<domain_state::preserved> preserve(domain<From>&& d) noexcept {
  return transition<domain_state::preserved>(std::move(d));
}

[[nodiscard]] inline domain<domain_state::adopted> adopt(domain<domain_state::preserved>&& d) noexcept {
  return transition<domain_state::adopted>(std::move(d));
}

// ADOPTED -> ATTACHED: keepalive left.
[[nodiscard]] inline domain<domain_state::attached> settle(domain<domain_state::adopted>&& d) noexcept {
  return transition<domain_state::attached>(std::move(d));
}

// PRESERVED -> NONE: reset or discarded keepalive.
[[nodiscard]] inline domain<domain_state::none> discard(domain<domain_state::preserved>&& d) noexcept {
  return transition<domain_state::none>(std::move(d));
}

template <domain_state From>
  requires(From != domain_state::error)
[[nodiscard]] domain<domain_state::error> fail(domain<From>&& d) noexcept {
  return transition<domain_state::error>(std::move(d));
}

[[nodiscard]] inline domain<domain_state::none> reset(domain<domain_state::error>&& d) noexcept {
  return transition<domain_state::none>(std::move(d));
}

}  // namespace keepalive::model
