// APIC vocabulary shared by the IRTE, the posted-interrupt descriptor and MSI messages.
#pragma once

#include <cstdint>

#include <keepalive/types.hpp>

namespace keepalive::hw {

// IRTA.EIME: 0 = xAPIC (8-bit destinations), 1 = x2APIC (32-bit).
enum class apic_mode : std::uint8_t { xapic = 0, x2apic = 1 };
// IRTE.DLM / MSI data 10:8; 3 and 6 are reserved.
enum class delivery_mode : std::uint8_t { fixed = 0, lowest_priority = 1, smi = 2, nmi = 4, init = 5, ext_int = 7 };
enum class dest_mode : std::uint8_t { physical = 0, logical = 1 };
enum class trigger_mode : std::uint8_t { edge = 0, level = 1 };

// A 32-bit destination as IRTE.DST and PID.NDST hold it. x2APIC: the APIC ID. xAPIC: the
// 8-bit ID in bits 15:8 (Linux IRTE_DEST() and vmx_vcpu_pi_load: (id << 8) & 0xFF00).
[[nodiscard]] constexpr std::uint32_t encode_destination(apic_id id, apic_mode mode) noexcept {
  return mode == apic_mode::x2apic ? id.value() : (id.value() << 8) & 0xFF00u;
}
[[nodiscard]] constexpr apic_id decode_destination(std::uint32_t raw, apic_mode mode) noexcept {
  return apic_id{mode == apic_mode::x2apic ? raw : (raw >> 8) & 0xFFu};
}
// xAPIC destinations are 8 bits; encode_destination() drops the rest.
[[nodiscard]] constexpr bool destination_fits(apic_id id, apic_mode mode) noexcept {
  return mode == apic_mode::x2apic || id.value() <= 0xFFu;
}
// Bits of a 32-bit destination that are reserved (must be 0) in xAPIC mode.
inline constexpr std::uint32_t xapic_destination_reserved = 0xFFFF00FFu;

}  // namespace keepalive::hw
