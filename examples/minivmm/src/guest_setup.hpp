// Guest memory and first-boot vCPU state: the flat image, the identity page
// tables, GDT/TSS, the boot-info page, and the long-mode registers the VMM
// enters the guest with (no real-mode trampoline: KVM_SET_SREGS does it).
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "guest/shared.h"
#include "keepalive/error.hpp"

namespace keepalive::minivmm {

struct guest_config {
  std::uint64_t ram_bytes = 16ull << 20;      // GPA [0, ram_bytes), IOVA identical
  std::uint64_t bar0_gpa = 0xc0000000ull;     // NIC BAR0 window (MMIO exits)
  std::uint32_t ring_entries = 4096;
  std::uint32_t buffer_bytes = 128;
  std::uint32_t payload_bytes = 16;
  std::uint32_t irq_mod_pkts = 32;
  std::uint32_t irq_mod_usec = 500;
  minivmm_verify_mode verify = MINIVMM_VERIFY_TABLES;
};

// Checks the layout fits (ring, tables, buffers inside RAM; BAR0 between RAM and the APIC).
[[nodiscard]] status validate(const guest_config& cfg);

// Writes image, page tables, GDT/TSS and boot info into `ram` (zeroing the
// part the guest uses first: up to the end of the packet buffers).
[[nodiscard]] status load_guest(std::span<std::byte> ram, std::span<const std::byte> image, const guest_config& cfg,
                                std::uint32_t tsc_khz);

// Long mode, CPL 0, flat segments, paging on the identity tables.
void initial_sregs(kvm_sregs& s);
[[nodiscard]] kvm_regs initial_regs();

// The guest image built with this VMM (guest/ compiled freestanding).
[[nodiscard]] std::span<const std::byte> builtin_guest_image() noexcept;

}  // namespace keepalive::minivmm
