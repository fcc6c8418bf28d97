// fsm/domain.hpp — the VT-d IOMMU domain a passthrough device does its DMA
// through, as the kernel keeps it through an owner's death and a kexec. This
// comment is the specification; domain_arcs below is its machine-checked
// form. Formats: hw/ (root and context entries, second-level PTEs).
//
// STATES
//  NONE       No domain: the device's context entry is not present (or points
//             at the default domain); its DMA faults or is blocked.
//  ATTACHED   The device's context entry is present and points at the
//             domain's second-level tables (SLPTPTR, AW = levels), tagged with
//             the domain's DID, which is allocated. An owner's iommufd IOAS or
//             VFIO container maps and unmaps through it.
//  PRESERVED  The owner is gone (device OWNERLESS) or the host went through
//             kexec (FROZEN, RESTORED). Root table, context entry,
//             second-level tables and DID are untouched and still translate
//             the device's DMA; no userspace object refers to the domain.
//  ADOPTED    A new owner's iommufd IOAS / VFIO container took the same domain
//             as it is, without re-mapping: its mappings describe the same
//             guest memory (guest RAM lives in memory that survived the
//             restart), so the tables already say what the new owner would.
//  ERROR      Left only by reset.
//
// ARCS (trigger; what the kernel does; what it must never do)
//  NONE -> ATTACHED "attach". VFIO_DEVICE_ATTACH_IOMMUFD_PT / container
//    attach: allocate a DID (never 0: Linux reserves it), allocate the
//    top-level table, write the context entry whole (TT multi-level, AW,
//    SLPTPTR, DID, present last), invalidate the context cache.
//  ATTACHED -> NONE "detach". Ordinary release: clear the context entry,
//    invalidate context cache and the DID's IOTLB, then free the tables and
//    release the DID — in that order, so no cached translation outlives its
//    table page.
//  ATTACHED -> PRESERVED "preserve". Keepalive close (device -> OWNERLESS).
//    The kernel drops the owner's objects but pins the domain: nothing is
//    written to the root table, the context entry or the tables, no
//    invalidation is needed. Never unmaps (the device is mid-DMA), never
//    frees a table page, never releases the DID (a reused DID would hit the
//    stale IOTLB entries tagged with it).
//  PRESERVED -> ADOPTED "adopt". The reclaiming owner attaches its IOAS /
//    container: the kernel binds it to the preserved domain instead of a
//    fresh one, and checks that the owner's mappings agree with the tables.
//    Never re-maps and never clears the context entry, not even briefly:
//    there must be no window in which the device's DMA faults.
//  ADOPTED -> ATTACHED "settle". The device left keepalive (RECLAIMED ->
//    RUNNING): from now on an ordinary attached domain.
//  ADOPTED -> PRESERVED "preserve". The new owner died before leaving: as
//    ATTACHED -> PRESERVED, the domain stays as it is.
//  PRESERVED -> NONE "discard" (reset kind). Operator reset or discarded
//    keepalive: only after the device was quiesced (FLR, Bus Master Enable
//    clear) the context entry is cleared, caches invalidated, tables freed,
//    DID released, as for detach.
//  any other state -> ERROR "fail". The kernel lost the domain: tables not
//    restorable from the handover image, the device gone.
//  ERROR -> NONE "reset". The context entry is cleared and whatever the
//    kernel still owns of the domain is freed, after the device was quiesced.
//
// REFUSALS. Anything else: EBUSY, nothing changed — e.g. adopting a domain
// that was never preserved, detaching a preserved domain without a reset.
//
// ROUTES. next_hop plans over normal arcs: NONE -> ADOPTED via ATTACHED and
// PRESERVED; PRESERVED -> NONE via ADOPTED and ATTACHED (adopt, settle,
// detach): a route never discards a preserved domain.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <keepalive/error.hpp>
#include <keepalive/fsm/table.hpp>

namespace keepalive::fsm {

enum class domain_state : std::uint8_t {
  none = 0,
  attached = 1,
  preserved = 2,
  adopted = 3,
  error = 4,
};
inline constexpr std::size_t domain_state_count = 5;
static_assert(static_cast<std::size_t>(domain_state::error) + 1 == domain_state_count);

namespace domain_arcs_detail {
using enum domain_state;
inline constexpr auto arcs = std::to_array<arc<domain_state>>({
    {none, attached, "attach"},
    {attached, none, "detach"},
    {attached, preserved, "preserve"},
    {preserved, adopted, "adopt"},
    {adopted, attached, "settle"},
    {adopted, preserved, "preserve"},
    {preserved, none, "discard", arc_kind::reset},
    {none, error, "fail", arc_kind::failure},
    {attached, error, "fail", arc_kind::failure},
    {preserved, error, "fail", arc_kind::failure},
    {adopted, error, "fail", arc_kind::failure},
    {error, none, "reset", arc_kind::reset},
});
}  // namespace domain_arcs_detail

inline constexpr auto domain_arcs = domain_arcs_detail::arcs;
inline constexpr table<domain_state, domain_state_count, domain_arcs.size()> domain_table{
    domain_state::none, domain_state::error, domain_arcs};

static_assert(domain_table.every_state_reachable_from_initial());
static_assert(domain_table.initial_reachable_from_every_state());
static_assert(domain_table.every_state_has_failure_arc());
static_assert(domain_table.error_left_only_by_reset());
static_assert(domain_table.arc_kinds_consistent());
static_assert(domain_table.blocked_arcs_map_to_error());
static_assert(domain_table.routes_follow_arcs());

[[nodiscard]] constexpr bool domain_allowed(domain_state from, domain_state to) noexcept {
  return domain_table.allowed(from, to);
}
[[nodiscard]] constexpr bool allowed(domain_state from, domain_state to) noexcept { return domain_allowed(from, to); }
[[nodiscard]] constexpr errc check(domain_state from, domain_state to) noexcept { return domain_table.check(from, to); }
[[nodiscard]] constexpr domain_state next_hop(domain_state from, domain_state to) noexcept {
  return domain_table.next_hop(from, to);
}
[[nodiscard]] constexpr bool reachable(domain_state from, domain_state to) noexcept {
  return domain_table.reachable(from, to);
}

[[nodiscard]] constexpr std::string_view name(domain_state s) noexcept {
  switch (s) {
    case domain_state::none: return "none";
    case domain_state::attached: return "attached";
    case domain_state::preserved: return "preserved";
    case domain_state::adopted: return "adopted";
    case domain_state::error: return "error";
  }
  return "invalid";
}

}  // namespace keepalive::fsm
