// What one VMM process hands the next across a restart: where guest RAM lives
// (never its contents), the guest configuration, every vCPU's state, the
// irqchip, and per passthrough device its address, vector routes and the
// keepalive token. Encoded as a versioned, checksummed record stream so a NEWER
// VMM binary can take over from an older one; the decoder refuses anything
// truncated, corrupt, duplicated or unknown.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "guest_setup.hpp"
#include "keepalive/error.hpp"
#include "keepalive/types.hpp"
#include "kvm.hpp"
#include "passthrough.hpp"

namespace keepalive::minivmm {

struct device_record {
  bdf device;
  vector_route route;
  token owner;  // keepalive token the device was entered with
};

struct vmm_state {
  std::uint64_t ram_phys_offset = 0;  // guest RAM = [offset, offset + guest.ram_bytes) of the phys file, GPA 0
  std::uint32_t tsc_khz = 0;
  guest_config guest;
  std::vector<vcpu_state> vcpus;
  irqchip_state irqchip;
  std::vector<device_record> devices;
  std::uint64_t pause_started_ns = 0;  // CLOCK_MONOTONIC when the old VMM asked its vCPUs to stop
};

inline constexpr std::uint64_t state_magic = 0x54415453564d414bull;  // "KAMVSTAT"
inline constexpr std::uint32_t state_version = 1;

[[nodiscard]] std::vector<std::byte> encode(const vmm_state& s);
[[nodiscard]] result<vmm_state> decode(std::span<const std::byte> bytes);

// Through a file descriptor (a pipe, a memfd passed across exec, a socket).
[[nodiscard]] status write_state(int fd, const vmm_state& s);
[[nodiscard]] result<vmm_state> read_state(int fd);

}  // namespace keepalive::minivmm
