// fsm/device.hpp — the keepalive device lifecycle. This comment is the
// specification; device_arcs below is its machine-checked form; the values are
// enum vfio_keepalive_state of uapi/linux/vfio_keepalive.h. The vector
// (fsm/vector.hpp) and domain (fsm/domain.hpp) machines move in step with it.
//
// STATES
//  RUNNING     An ordinary VFIO device, no token. Its release path disables it
//              as VFIO always has. Also the state after any reset.
//  KEPT_ALIVE  The owner armed keepalive: token recorded, irq mode chosen, the
//              owner still holds the fd.
//  OWNERLESS   The owner's fd is gone and nobody owns the device. It keeps
//              doing DMA through its preserved second-level tables; its
//              interrupts accumulate in the preserved PIDs (SN set) or, in
//              masking mode, in the MSI-X pending bits.
//  RECLAIMED   A new owner opened it with the token; keepalive still armed, so
//              its death leaves the device OWNERLESS again, not disabled.
//  FROZEN      Serialised into the stage-2 handover image: domain, tables,
//              IRTEs and PIDs as written in the image. Nothing may change them
//              until abort or kexec, or the image lies.
//  RESTORED    Rebuilt by the new kernel after kexec from the handover image
//              alone, at the same physical addresses; unowned like OWNERLESS.
//  ERROR       The kernel could not keep its promise. Left only by reset.
//
// INVARIANT. In KEPT_ALIVE, OWNERLESS, RECLAIMED, FROZEN and RESTORED the
// kernel never disables the device, resets it, clears Bus Master Enable, frees
// its IRTEs or tears down its IOMMU domain — except on the two arcs that exist
// for it: reset (-> RUNNING, operator-requested) and failure (-> ERROR).
//
// ARCS (trigger; what the kernel does; what it must never do)
//  RUNNING -> KEPT_ALIVE "enter". VFIO_DEVICE_KEEPALIVE_ENTER with a non-zero
//    token (zero: EINVAL). Records the token; picks the irq mode: posted when
//    the platform posts, masked when ALLOW_MASKING was given and every vector
//    can be masked, else EOPNOTSUPP. All-or-nothing. Never changes the
//    device's DMA or interrupt routing: it only changes what close will do.
//  KEPT_ALIVE -> RUNNING "leave". LEAVE with the token: the owner changes its
//    mind (a session rollback). Forgets the token. Never touches the device.
//  KEPT_ALIVE -> OWNERLESS "close". The last fd of the device closes: the
//    owner exited, was killed or crashed; one arc, the kernel cannot tell them
//    apart and must not care. Sets SN in every posted vector's PID so
//    interrupts accumulate in PIR without notifying a vCPU that is gone (or
//    masks each vector in masking mode); keeps every IRTE (vector PRESERVED)
//    and the domain (domain PRESERVED). Never runs VFIO's release path: no
//    pci_clear_master, no FLR, no IRTE free, no domain detach, no unmap.
//  OWNERLESS -> RECLAIMED, RESTORED -> RECLAIMED "reclaim". An open that
//    presents the token ("<bdf> vf_token=<uuid>" to VFIO_GROUP_GET_DEVICE_FD,
//    or VFIO_DEVICE_BIND_FLAG_TOKEN). The state is checked before the token.
//    Wrong or missing token: EACCES and nothing changes. The new owner's
//    iommufd/container takes the preserved domain as it is (domain ADOPTED);
//    vectors stay PRESERVED until the owner sets each index up again
//    (VFIO_DEVICE_SET_IRQS, vector RECONNECTED then drained). Never re-maps the
//    domain, never re-allocates an IRTE, never drops a pending interrupt.
//  RECLAIMED -> RUNNING "leave". LEAVE with the token once the new owner has
//    re-attached its vectors: the talk's "set-keepalive off". Vectors not set
//    up again are freed now (IRTE released); domain ADOPTED -> ATTACHED. From
//    here on an ordinary device.
//  RECLAIMED -> OWNERLESS "close". The new owner dies before leaving. As for
//    KEPT_ALIVE -> OWNERLESS: reconnected vectors are preserved again (their
//    current PID gets SN), domain ADOPTED -> PRESERVED. The token is kept: the
//    device must stay reclaimable by the next owner.
//  OWNERLESS -> FROZEN, RESTORED -> FROZEN "prepare_stage2".
//    VFIO_KEEPALIVE_STAGE2_PREPARE on the control node; from RESTORED it is a
//    second kexec before anyone reclaimed. Serialises the device's domain,
//    tables, IRTEs and PIDs into the versioned, checksummed handover image in
//    preserved memory. All-or-nothing across devices: EBUSY if any device is
//    KEPT_ALIVE or RECLAIMED (still owned) or stage 2 is already prepared.
//    Never stops the device: it keeps doing DMA and posting while frozen.
//  FROZEN -> OWNERLESS "abort_stage2". VFIO_KEEPALIVE_STAGE2_ABORT: the image
//    is discarded; nothing of the device was touched. A device that was
//    RESTORED before PREPARE comes back OWNERLESS (unowned and live either way).
//  FROZEN -> RESTORED "finish_kexec". The new kernel boots, validates the whole
//    image (version, checksum) and re-creates domain, DID, tables, IRTEs and
//    PIDs at the addresses the image names, before the IOMMU is re-enabled
//    with the preserved root table. Never re-enumerates the device in a way
//    that resets it or clears Bus Master Enable.
//  OWNERLESS -> RUNNING, RESTORED -> RUNNING "reset". The operator's way out,
//    VFIO_KEEPALIVE_RESET_DEVICE: FLR, IRTEs freed, domain torn down, token
//    forgotten, EVENT_RESET queued. Never on an owned device (KEPT_ALIVE,
//    RECLAIMED: it would pull the device from under its owner) nor a FROZEN
//    one (from under the image): EBUSY.
//  any other state -> ERROR "fail". Kernel-triggered, never requested by
//    userspace: enumeration failed after kexec (EVENT_ENUM_FAILED), the
//    handover image was refused (EVENT_HANDOVER_REJECTED, EPROTO), the device
//    fell off the bus (EIO). The device is quiesced (reset when still present:
//    the kernel can no longer vouch for its DMA targets), its IRTEs and domain
//    released, the token forgotten, an event queued.
//  ERROR -> RUNNING "reset". VFIO_KEEPALIVE_RESET_DEVICE; the only way out.
//
// REFUSALS. Any other request changes nothing and returns EBUSY (double
// enter, leave while OWNERLESS, prepare while owned, reset while FROZEN, a
// second reclaim, ...), except a reclaim of a RUNNING device: ENOENT, the
// device is not in keepalive. Staying put (from == to) is not an arc either.
//
// ROUTES. next_hop(from, to) plans over the normal arcs only (fsm/table.hpp):
// KEPT_ALIVE -> RECLAIMED goes via OWNERLESS, RUNNING -> FROZEN via KEPT_ALIVE
// and OWNERLESS; a route never resets or fails the device. ERROR reaches
// nothing but RUNNING (by its reset arc).
#pragma once

#include <linux/vfio_keepalive.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <keepalive/error.hpp>
#include <keepalive/fsm/table.hpp>

namespace keepalive::fsm {

enum class device_state : std::uint32_t {
  running = VFIO_KEEPALIVE_STATE_RUNNING,
  kept_alive = VFIO_KEEPALIVE_STATE_KEPT_ALIVE,
  ownerless = VFIO_KEEPALIVE_STATE_OWNERLESS,
  reclaimed = VFIO_KEEPALIVE_STATE_RECLAIMED,
  frozen = VFIO_KEEPALIVE_STATE_FROZEN,
  restored = VFIO_KEEPALIVE_STATE_RESTORED,
  error = VFIO_KEEPALIVE_STATE_ERROR,
};
inline constexpr std::size_t device_state_count = 7;

static_assert(static_cast<std::uint32_t>(device_state::running) == 0);
static_assert(static_cast<std::uint32_t>(device_state::kept_alive) == 1);
static_assert(static_cast<std::uint32_t>(device_state::ownerless) == 2);
static_assert(static_cast<std::uint32_t>(device_state::reclaimed) == 3);
static_assert(static_cast<std::uint32_t>(device_state::frozen) == 4);
static_assert(static_cast<std::uint32_t>(device_state::restored) == 5);
static_assert(static_cast<std::uint32_t>(device_state::error) == 6);
static_assert(static_cast<std::size_t>(device_state::error) + 1 == device_state_count);

namespace device_arcs_detail {
using enum device_state;
inline constexpr auto arcs = std::to_array<arc<device_state>>({
    {running, kept_alive, "enter"},
    {kept_alive, running, "leave"},
    {kept_alive, ownerless, "close"},
    {ownerless, reclaimed, "reclaim"},
    {restored, reclaimed, "reclaim"},
    {reclaimed, running, "leave"},
    {reclaimed, ownerless, "close"},
    {ownerless, frozen, "prepare_stage2"},
    {restored, frozen, "prepare_stage2"},
    {frozen, ownerless, "abort_stage2"},
    {frozen, restored, "finish_kexec"},
    {ownerless, running, "reset", arc_kind::reset},
    {restored, running, "reset", arc_kind::reset},
    {running, error, "fail", arc_kind::failure},
    {kept_alive, error, "fail", arc_kind::failure},
    {ownerless, error, "fail", arc_kind::failure},
    {reclaimed, error, "fail", arc_kind::failure},
    {frozen, error, "fail", arc_kind::failure},
    {restored, error, "fail", arc_kind::failure},
    {error, running, "reset", arc_kind::reset},
});
inline constexpr auto refusals = std::to_array<refusal<device_state>>({
    {running, reclaimed, errc::not_found},  // reclaim of a device not in keepalive
});
}  // namespace device_arcs_detail

inline constexpr auto device_arcs = device_arcs_detail::arcs;
inline constexpr auto device_refusals = device_arcs_detail::refusals;
inline constexpr table<device_state, device_state_count, device_arcs.size(), device_refusals.size()> device_table{
    device_state::running, device_state::error, device_arcs, device_refusals};

static_assert(device_table.every_state_reachable_from_initial());
static_assert(device_table.initial_reachable_from_every_state());
static_assert(device_table.every_state_has_failure_arc());
static_assert(device_table.error_left_only_by_reset());
static_assert(device_table.arc_kinds_consistent());
static_assert(device_table.blocked_arcs_map_to_error());
static_assert(device_table.routes_follow_arcs());

[[nodiscard]] constexpr bool device_allowed(device_state from, device_state to) noexcept {
  return device_table.allowed(from, to);
}
[[nodiscard]] constexpr bool allowed(device_state from, device_state to) noexcept { return device_allowed(from, to); }
[[nodiscard]] constexpr errc check(device_state from, device_state to) noexcept { return device_table.check(from, to); }
[[nodiscard]] constexpr device_state next_hop(device_state from, device_state to) noexcept {
  return device_table.next_hop(from, to);
}
[[nodiscard]] constexpr bool reachable(device_state from, device_state to) noexcept {
  return device_table.reachable(from, to);
}

[[nodiscard]] constexpr std::string_view name(device_state s) noexcept {
  switch (s) {
    case device_state::running: return "running";
    case device_state::kept_alive: return "kept_alive";
    case device_state::ownerless: return "ownerless";
    case device_state::reclaimed: return "reclaimed";
    case device_state::frozen: return "frozen";
    case device_state::restored: return "restored";
    case device_state::error: return "error";
  }
  return "invalid";
}

}  // namespace keepalive::fsm
