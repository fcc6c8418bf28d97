// session.hpp — what a VMM calls to keep its passthrough devices alive across
// a restart, in one place. Two orders on the old side (see ORDER):
//
//   close-first (fast)                        state-first
//   pause vCPUs                               pause vCPUs
//   auto snap = s.freeze(tok);                deassign the KVM irqfds
//   s.hand_over();    // OWNERLESS            collect vCPU state
//   collect vCPU state (LAPIC included)       auto snap = s.freeze(tok, state);
//   add_vmm_state(*snap, state);              s.hand_over();
//   write_snapshot(fd, *snap); exit or exec   write_snapshot(fd, *snap); exit or exec
//   (on failure after hand_over:
//    s.call_off(wiring), resume vCPUs)
//
//   new VMM (VM, slots, vCPUs, irqfds prepared early)
//   auto snap = read_snapshot(fd); map snap.ram[i].backing, set .vaddr
//   restore vCPU state (LAPIC included); assign the KVM irqfds if not yet
//   s.reclaim(*snap, wiring);  // drains      resume vCPUs
//
// ORDER MATTERS (an interrupt must land in exactly one place: the saved
// LAPIC, or the preserved descriptor that reclaim drains into the new VM):
//  - close-first. hand_over() closes the device while the vCPUs are paused
//    but before their state is read. From the close on the device is
//    OWNERLESS and its vectors post into a descriptor keepalive owns; this
//    VM's eventfd is never signalled again. Every signal before the close was
//    already injected: KVM delivers a fixed, single-destination MSI
//    synchronously from the irqfd wake-up (kvm_arch_set_irq_inatomic), so it
//    is in the LAPIC (IRR, or the vCPU's PIR, synced into IRR by
//    KVM_GET_LAPIC) before the eventfd write returns; a vector the IOMMU posts
//    itself goes to that PIR until the close re-points its IRTE, to
//    keepalive's descriptor after. The LAPIC read after
//    the close therefore holds all of them, and nothing arrives after it. No
//    KVM_IRQFD deassign is needed (it waits for an SRCU grace period, 1-8 ms);
//    the irqfd goes with the old VM. A VMM must still deassign (and use the
//    state-first order) when KVM may defer the injection to a work item:
//    lowest-priority or broadcast/multi-destination MSIs, level-triggered
//    routes, an irqfd with a resampler, a userspace or split irqchip whose
//    IOAPIC/PIC routes the GSI, or any kernel whose irqfd wake-up is not
//    synchronous for the route in use; and when anything else may signal
//    the eventfd after the close (the VMM's own MSI-X emulation, a vhost
//    backend, an fd hand-over whose device keeps it). If collecting the state fails after
//    the close, call_off() reclaims the devices into the same VM (the
//    interrupts meanwhile are drained into its irqfds) and the VM runs on.
//  - state-first. Deassign the irqfds BEFORE collecting vCPU state: an
//    interrupt injected into the LAPIC after its state was read would be
//    lost; with the irqfd deassigned it stays counted in the eventfd (or
//    posted in PIR) and is injected when the new VMM assigns its irqfd.
//    freeze(tok, state) takes the state with the devices still open, so
//    thaw() can still call the restart off before hand_over().
//  - new side: restore the LAPIC BEFORE reclaim. reclaim drains what was
//    pending into the irqfd; a KVM_SET_LAPIC after that would wipe it.
//  - hand_over() closes the device fds at once, so the new VMM can reclaim
//    while the old one is still tearing its VM down.
//  A snapshot from freeze(tok) has no vCPU state (nr_vcpus 0): it does not
//  validate, so encode/write_snapshot refuse it until add_vmm_state().
//
// The session does the VFIO side itself over any abi::syscalls (the sim
// process in-process, the sim transport, linux_syscalls()): container
// (/dev/vfio/vfio), groups (/dev/vfio/<group>), VFIO_SET_IOMMU(TYPE1v2), the
// device fds (plain BDF cold, abi::reclaim_name(bdf, token) to reclaim), one
// VFIO_IOMMU_MAP_DMA per guest RAM region, VFIO_DEVICE_SET_IRQS (MSI-X,
// eventfds), VFIO_DEVICE_KEEPALIVE_ENTER/LEAVE. The KVM side is the VMM's:
// it implements interrupt_wiring.
//
// ALL-OR-NOTHING
//  freeze   enters every device in order; if device k refuses, devices 1..k-1
//           leave keepalive again and the session stays running: the VMM
//           resumes its vCPUs and carries on. The error names the device:
//           "EBUSY (...): enter 0000:00:06.0 (device 3 of 3): ...".
//  call_off after hand_over: reclaim with the session's own token into the
//           same VM (the wiring first hears rolled_back for every vector:
//           the kernel took them at the close). If that fails the devices
//           are put back OWNERLESS as by reclaim, the session is idle with
//           the same configuration: reclaim(snapshot) may be retried.
//  reclaim  opens every device with the token, maps RAM (a preserved domain
//           is adopted: identical mappings succeed without re-mapping), sets
//           up each vector and has the wiring connect it (the kernel
//           reconnects the preserved IRTE and drains what was posted while
//           nobody owned the device), then leaves keepalive on every device.
//           If any step fails for device k, every device already reclaimed is
//           put back: its fd is closed without LEAVE, so it is OWNERLESS
//           again, live and still reclaimable. (A LEAVE that fails after
//           others succeeded re-enters those first.) The error says what
//           failed, for which device, and the fallback.
//  The session never stays in a half state: when a rollback itself fails the
//  phase is `broken` and only close() is accepted.
//
// FALLBACK (reset_and_reinit). When a device cannot be reclaimed (EACCES: the
// token is lost; EBUSY: the device is in ERROR, e.g. its handover image was
// refused; EIO), the safe way on is fallback_reset(bdf) — or
// fallback_reset(snapshot) for all of them — which asks the control node
// (VFIO_KEEPALIVE_RESET_DEVICE) to reset the device (FLR, IRTEs freed, domain
// torn down), then open(wiring): a cold open. The guest driver re-initialises
// the device (the guest sees a device reset, packets in flight are lost).
// After a failed reclaim the session keeps the snapshot's devices and RAM as
// its configuration, so fallback_reset(snap) then open(wiring) is the whole
// fallback.
//
// Each call is the arc of the same name in session_table below; a call with
// no such arc out of the current phase returns errc::busy and changes
// nothing. A session is not thread-safe.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include <keepalive/abi/ops.hpp>
#include <keepalive/abi/syscalls.hpp>
#include <keepalive/error.hpp>
#include <keepalive/fsm/table.hpp>
#include <keepalive/snapshot.hpp>
#include <keepalive/types.hpp>

namespace keepalive {

// ---- phases ----

enum class session_phase : std::uint8_t {
  idle,         // nothing open (new, after close, after a failed open/reclaim)
  running,      // devices open and owned, not in keepalive
  frozen,       // every device KEPT_ALIVE with the token; fds still held
  handed_over,  // fds closed: devices OWNERLESS; this session is done
  reclaimed,    // inside reclaim(): devices RECLAIMED, vectors reconnected
  broken,       // a rollback failed; only close()
};
inline constexpr std::size_t session_phase_count = 6;

namespace session_arcs_detail {
using enum session_phase;
inline constexpr auto arcs = std::to_array<fsm::arc<session_phase>>({
    {idle, running, "open"},
    {idle, reclaimed, "reclaim"},
    {reclaimed, running, "leave"},
    {reclaimed, idle, "put_back"},
    {running, frozen, "freeze"},
    {frozen, running, "thaw"},
    {frozen, handed_over, "hand_over"},
    {handed_over, reclaimed, "call_off"},
    {running, idle, "close"},
    {running, broken, "fail", fsm::arc_kind::failure},
    {frozen, broken, "fail", fsm::arc_kind::failure},
    {reclaimed, broken, "fail", fsm::arc_kind::failure},
    {broken, idle, "close", fsm::arc_kind::reset},
});
}  // namespace session_arcs_detail

inline constexpr fsm::table<session_phase, session_phase_count, session_arcs_detail::arcs.size()> session_table{
    session_phase::idle, session_phase::broken, session_arcs_detail::arcs};
static_assert(session_table.arc_kinds_consistent());
static_assert(session_table.error_left_only_by_reset());
static_assert(session_table.blocked_arcs_map_to_error());
static_assert(session_table.routes_follow_arcs());
// A handed-over session only comes back by reclaiming its devices.
static_assert(session_table.next_hop(session_phase::handed_over, session_phase::running) == session_phase::reclaimed);
static_assert(!session_table.allowed(session_phase::handed_over, session_phase::idle));

[[nodiscard]] std::string_view name(session_phase p) noexcept;

// ---- what the VMM describes ----

struct device_spec {
  bdf address;
  std::uint32_t group = 0;  // IOMMU group: /dev/vfio/<group>
  std::vector<vector_route> vectors;
};

// A device vector the session sets up, as the wiring sees it.
struct vector_binding {
  std::size_t device_index = 0;  // position in the session's device list
  bdf device;
  int device_fd = -1;  // the VFIO device fd in the session's process
  vector_route route;
};

// The KVM side, implemented by the VMM. For every vector the session asks
// eventfd() (before VFIO_DEVICE_SET_IRQS), then connect() (after it).
class interrupt_wiring {
 public:
  virtual ~interrupt_wiring() = default;
  // The eventfd the vector signals: the guest MSI's KVM irqfd, which QEMU also
  // gives VFIO as the trigger. Owned by the wiring, open while in use.
  [[nodiscard]] virtual result<int> eventfd(const vector_binding& b) = 0;
  // Connect the vector to b.route.vcpu's posted-interrupt descriptor as
  // b.route.guest_vector (Linux: MSI routing + KVM_IRQFD, irq bypass posts
  // it; sim: KA_SIM_CREATE_PID once per vCPU + KA_SIM_IRQ_BYPASS). On a
  // reclaimed device this reconnects the preserved IRTE and drains it.
  [[nodiscard]] virtual status connect(const vector_binding& b, int eventfd) = 0;
  // The session put the devices back after a failed open or reclaim, or
  // call_off() follows a hand-over: the kernel took these vectors back (or
  // freed them; device_fd is -1 when the device was already closed). Drop every connection
  // made for them (Linux: KVM_IRQFD_FLAG_DEASSIGN; sim: fresh descriptors).
  virtual void rolled_back(std::span<const vector_binding> connected) noexcept = 0;
};

// The VMM's own state, taken with the vCPUs paused; carried opaque.
struct vmm_state {
  std::uint32_t nr_vcpus = 1;
  std::vector<vcpu_blob> vcpu_state;
  std::vector<std::byte> extra;
};

struct freeze_options {
  bool allow_masking = false;  // VFIO_KEEPALIVE_ENTER_ALLOW_MASKING (no posting)
};

// ---- timings (steady_clock), for the downtime harness ----

enum class mark_kind : std::uint8_t {
  open_begin, open_end,
  freeze_begin, enter, snapshot, freeze_end,
  thaw, hand_over,
  reclaim_begin, reclaim_open, map, set_irqs, connect, leave, reclaim_end,
  rollback,
};
[[nodiscard]] std::string_view name(mark_kind k) noexcept;

struct timing_mark {
  static constexpr std::size_t no_device = std::numeric_limits<std::size_t>::max();
  mark_kind kind;
  std::size_t device;  // device index for per-device marks, else no_device
  std::chrono::steady_clock::time_point at;
};

// The close-first order: the vCPU state collected after hand_over() goes
// into the snapshot freeze(tok) returned. errc::invalid (snapshot unchanged)
// when the result does not validate.
[[nodiscard]] status add_vmm_state(snapshot& snap, vmm_state state);

// ---- the session ----

class session {
 public:
  explicit session(abi::syscalls& sys);
  // Closes every fd it holds: a frozen session's devices become OWNERLESS
  // (like hand_over), a running one's are released as VFIO always does.
  ~session();
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  [[nodiscard]] session_phase phase() const noexcept;

  // idle: the VM's devices and guest RAM. add_device returns the index.
  [[nodiscard]] result<std::size_t> add_device(device_spec d);
  [[nodiscard]] status add_vector(std::size_t device_index, vector_route v);
  [[nodiscard]] status add_ram(ram_region r);
  [[nodiscard]] const std::vector<device_spec>& devices() const noexcept;
  [[nodiscard]] const std::vector<ram_region>& ram() const noexcept;

  // idle -> running: cold open (each device is reset by VFIO on open).
  [[nodiscard]] status open(interrupt_wiring& w);
  // running -> frozen. vCPUs must be paused; `state` is validated before
  // anything is entered (errc::invalid). The state-first order.
  [[nodiscard]] result<snapshot> freeze(const token& t, const vmm_state& state, freeze_options opt = {});
  // The close-first order: the snapshot without vCPU state (nr_vcpus 0,
  // refused by encode until add_vmm_state), then hand_over().
  [[nodiscard]] result<snapshot> freeze(const token& t);
  [[nodiscard]] result<snapshot> freeze(const token& t, freeze_options opt);
  // frozen -> running: leave keepalive again (the restart is called off).
  [[nodiscard]] status thaw();
  // frozen -> handed_over: close every fd; the devices are OWNERLESS.
  [[nodiscard]] status hand_over();
  // handed_over -> running through reclaimed: the restart is called off after
  // the close; the devices come back to this VM with the session's token.
  [[nodiscard]] status call_off(interrupt_wiring& w);
  // idle -> running through reclaimed (see ALL-OR-NOTHING). The snapshot's
  // devices and RAM become the session's; ram[i].vaddr is mapped as given.
  [[nodiscard]] status reclaim(const snapshot& snap, interrupt_wiring& w);
  // running or broken -> idle: every fd closed.
  [[nodiscard]] status close();

  // idle: the documented fallback (see FALLBACK).
  [[nodiscard]] status fallback_reset(bdf device);
  // Every device of `snap` that is not RUNNING.
  [[nodiscard]] status fallback_reset(const snapshot& snap);

  [[nodiscard]] int device_fd(std::size_t index) const noexcept;  // -1 when not open
  [[nodiscard]] int container_fd() const noexcept;
  [[nodiscard]] std::optional<token> owner_token() const;  // frozen, handed_over
  [[nodiscard]] abi::syscalls& syscalls() noexcept;

  [[nodiscard]] const std::vector<timing_mark>& timeline() const noexcept;
  void clear_timeline() noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> m_;
};

}  // namespace keepalive
