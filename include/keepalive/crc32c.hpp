// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final XOR
// ~0): the checksum of every keepalive format (stage-2 handover image, VMM
// snapshot). Check value: crc32c("123456789") == 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace keepalive {

[[nodiscard]] std::uint32_t crc32c(std::span<const std::byte> data) noexcept;

// Continues a running CRC: crc32c(a ++ b) == crc32c_extend(crc32c(a), b).
[[nodiscard]] std::uint32_t crc32c_extend(std::uint32_t crc, std::span<const std::byte> data) noexcept;

}  // namespace keepalive
