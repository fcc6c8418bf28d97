// fsm/vector.hpp — one MSI-X vector of a passthrough device, as the kernel
// keeps it through an owner's death and a kexec. This comment is the
// specification; vector_arcs below is its machine-checked form. Formats:
// hw/ (IRTE remapped and posted formats, posted-interrupt descriptor = PID).
//
// STATES
//  FREE         No IRTE. The MSI-X entry, if enabled, cannot reach anything.
//  REMAPPED     IRTE in remapped format (IM=0): delivered to a host CPU and
//               vector, signalled to the owner through its eventfd.
//  POSTED       IRTE in posted format (IM=1) pointing at a vCPU's PID (irq
//               bypass): the guest vector's PIR bit is set, notification
//               follows when SN is clear.
//  PRESERVED    The owner is gone (device OWNERLESS, FROZEN or RESTORED). The
//               IRTE is kept aside under its device vector index. Posted: the
//               PID is preserved with SN set, so new interrupts accumulate in
//               PIR and notify nobody. Remapped (masking fallback): the MSI-X
//               vector is masked and its pending bit holds the interrupt.
//  RECONNECTED  A new owner set the same vector index up again: the kept IRTE
//               now points at the new vCPU's PID (or, with no posting, at the
//               new owner's host vector); it was re-pointed, not re-allocated.
//               What the old PID accumulated is still to be delivered.
//  ERROR        Left only by reset.
//
// ARCS (trigger; what the kernel does; what it must never do)
//  FREE -> REMAPPED "setup". VFIO_DEVICE_SET_IRQS with an eventfd: allocate an
//    IRTE, write it whole in remapped format, invalidate the interrupt entry
//    cache (IEC), program the MSI-X entry with the remappable address.
//  REMAPPED -> POSTED "connect". KVM's irq-bypass producer meets its consumer:
//    the IRTE is rewritten in posted format for the vCPU's PID and guest
//    vector, as one 128-bit atomic update, then IEC invalidation.
//  POSTED -> REMAPPED "disconnect". The consumer goes: back to remapped format,
//    one atomic update, IEC invalidation.
//  REMAPPED -> FREE, POSTED -> FREE "teardown". Ordinary release (no
//    keepalive): MSI-X entry masked, IRTE cleared and freed, IEC invalidated.
//  REMAPPED -> PRESERVED, POSTED -> PRESERVED "preserve". The keepalive close
//    (device KEPT_ALIVE or RECLAIMED -> OWNERLESS). Posted: set SN in the PID
//    (atomically, PIR untouched), keep the IRTE exactly as it is. Remapped:
//    mask the MSI-X vector, keep the IRTE. Never clears or frees the IRTE,
//    never frees or reuses the PID's memory, never clears a PIR bit: every
//    interrupt raised from here on must be found later.
//  PRESERVED -> RECONNECTED "reconnect". The new owner sets up the same vector
//    index: the kept IRTE is re-pointed to the new vCPU's PID (posted) or to
//    the new owner's host vector (no posting), one atomic update, then IEC
//    invalidation and its wait, so hardware posts nothing more to the old PID.
//    Never allocates a second IRTE for the index; never writes the MSI-X
//    address/data (the device keeps using the message it has).
//  RECONNECTED -> POSTED "drain". The old PID's pending PIR bits are moved to
//    the new PID (each 64-bit PIR word exchanged with zero, then OR-ed into the
//    new PIR; ON set and the vCPU notified when its SN is clear). Only after
//    the re-point's invalidation completed: nothing posted late is stranded.
//  RECONNECTED -> REMAPPED "drain". The new owner has no posting: every pending
//    bit (old PIR, or the MSI-X pending bit after unmasking) is delivered by
//    signalling the new owner's eventfd.
//  PRESERVED -> FREE "discard" (reset kind). The device was reset (operator
//    reset) or its keepalive discarded: only once the device can no longer
//    send the message (FLR done, or masked), the IRTE is cleared and freed,
//    IEC invalidated; the PID memory is released to its owner.
//  any other state -> ERROR "fail". The kernel lost the vector: IRTE or PID
//    not restorable after kexec, an interrupt-remapping fault on it, the
//    device failed. The vector is masked where still possible.
//  ERROR -> FREE "reset". Whatever IRTE remains is cleared and freed.
//
// REFUSALS. Anything else: EBUSY, nothing changed — e.g. connect of a FREE
// vector (posting needs an IRTE first), reconnect of a vector that was never
// preserved, teardown of a PRESERVED vector without a reset.
//
// ROUTES. next_hop plans over normal arcs: FREE -> POSTED via REMAPPED,
// PRESERVED -> POSTED via RECONNECTED, and PRESERVED -> FREE via RECONNECTED
// (reconnect, drain, teardown): a route never discards a preserved vector;
// only the direct discard request does.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <keepalive/error.hpp>
#include <keepalive/fsm/table.hpp>

namespace keepalive::fsm {

enum class vector_state : std::uint8_t {
  free = 0,
  remapped = 1,
  posted = 2,
  preserved = 3,
  reconnected = 4,
  error = 5,
};
inline constexpr std::size_t vector_state_count = 6;
static_assert(static_cast<std::size_t>(vector_state::error) + 1 == vector_state_count);

namespace vector_arcs_detail {
using enum vector_state;
inline constexpr auto arcs = std::to_array<arc<vector_state>>({
    {free, remapped, "setup"},
    {remapped, posted, "connect"},
    {posted, remapped, "disconnect"},
    {remapped, free, "teardown"},
    {posted, free, "teardown"},
    {remapped, preserved, "preserve"},
    {posted, preserved, "preserve"},
    {preserved, reconnected, "reconnect"},
    {reconnected, posted, "drain"},
    {reconnected, remapped, "drain"},
    {preserved, free, "discard", arc_kind::reset},
    {remapped, error, "fail", arc_kind::failure},
    {posted, error, "fail", arc_kind::failure},
    {preserved, error, "fail", arc_kind::failure},
    {reconnected, error, "fail", arc_kind::failure},
    {free, error, "fail", arc_kind::failure},
    {error, free, "reset", arc_kind::reset},
});
}  // namespace vector_arcs_detail

inline constexpr auto vector_arcs = vector_arcs_detail::arcs;
inline constexpr table<vector_state, vector_state_count, vector_arcs.size()> vector_table{
    vector_state::free, vector_state::error, vector_arcs};

static_assert(vector_table.every_state_reachable_from_initial());
static_assert(vector_table.initial_reachable_from_every_state());
static_assert(vector_table.every_state_has_failure_arc());
static_assert(vector_table.error_left_only_by_reset());
static_assert(vector_table.arc_kinds_consistent());
static_assert(vector_table.blocked_arcs_map_to_error());
static_assert(vector_table.routes_follow_arcs());

[[nodiscard]] constexpr bool vector_allowed(vector_state from, vector_state to) noexcept {
  return vector_table.allowed(from, to);
}
[[nodiscard]] constexpr bool allowed(vector_state from, vector_state to) noexcept { return vector_allowed(from, to); }
[[nodiscard]] constexpr errc check(vector_state from, vector_state to) noexcept { return vector_table.check(from, to); }
[[nodiscard]] constexpr vector_state next_hop(vector_state from, vector_state to) noexcept {
  return vector_table.next_hop(from, to);
}
[[nodiscard]] constexpr bool reachable(vector_state from, vector_state to) noexcept {
  return vector_table.reachable(from, to);
}

[[nodiscard]] constexpr std::string_view name(vector_state s) noexcept {
  switch (s) {
    case vector_state::free: return "free";
    case vector_state::remapped: return "remapped";
    case vector_state::posted: return "posted";
    case vector_state::preserved: return "preserved";
    case vector_state::reconnected: return "reconnected";
    case vector_state::error: return "error";
  }
  return "invalid";
}

}  // namespace keepalive::fsm
