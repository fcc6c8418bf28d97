// What one VMM process hands the next across a restart, in the library's
// snapshot (include/keepalive/snapshot.hpp, keepalive-snapshot-v1, CRC-32C;
// `keepalivectl decode-snapshot` prints it): the keepalive token, the devices
// and guest RAM (from the session), and the VM's own state:
//   vCPU blobs  KVM_GET_REGS, _SREGS, _XSAVE, _XCRS, _LAPIC, _VCPU_EVENTS,
//               _MP_STATE, _DEBUGREGS, _MSRS (kvm_msr_entry each), and the TSC
//               offset (tag vmm_private + 1)
//   extra       "minivmm-vm-v1": where guest RAM is in the physical-memory
//               file, TSC kHz, the guest configuration, the irqchip, the
//               vector's MSI route (GSI, destination APIC), the pause start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "guest_setup.hpp"
#include "keepalive/error.hpp"
#include "keepalive/session.hpp"
#include "keepalive/snapshot.hpp"
#include "keepalive/types.hpp"
#include "kvm.hpp"
#include "passthrough.hpp"

namespace keepalive::minivmm {

// The VM's own state (never the devices: the session's part of the snapshot).
struct vm_state {
  std::uint64_t ram_phys_offset = 0;  // guest RAM = [offset, offset + guest.ram_bytes) of the phys file, GPA 0
  std::uint32_t tsc_khz = 0;
  guest_config guest;
  std::vector<vcpu_state> vcpus;
  irqchip_state irqchip;
  vector_route route;                 // the passthrough vector's MSI route
  std::uint64_t pause_started_ns = 0;  // CLOCK_MONOTONIC when the old VMM asked its vCPUs to stop
};

inline constexpr vcpu_state_tag tsc_offset_tag = static_cast<vcpu_state_tag>(0x10001);

// The session's vmm_state: one blob per KVM_GET_* and vCPU, the rest in extra.
[[nodiscard]] keepalive::vmm_state to_session_state(const vm_state& s);
// Back from a decoded snapshot; errc::protocol when a blob or extra is not
// what this VMM writes.
[[nodiscard]] result<vm_state> vm_state_of(const snapshot& snap);

// A snapshot without devices (restarts that carry the device fds): the VM
// state alone, under a fresh token.
[[nodiscard]] result<snapshot> snapshot_without_devices(const vm_state& s);

}  // namespace keepalive::minivmm
