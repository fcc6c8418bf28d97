// The device side of the VMM, behind one small interface: the syscalls of this
// VMM process into the (sim) host kernel and the physical-memory file guest
// RAM is a slice of. In-process it is a sim `process` of a sim kernel booted
// in this address space; with the daemon it will be a sim_transport (an
// abi::syscalls over a socket, with the phys memfd received from the daemon).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "keepalive/abi/syscalls.hpp"
#include "keepalive/error.hpp"
#include "keepalive/types.hpp"

namespace keepalive::minivmm {

class host_link {
 public:
  virtual ~host_link() = default;
  // The VMM process's syscalls (VFIO, keepalive, the sim's /dev/kvm stand-in).
  virtual abi::syscalls& sys() = 0;
  // Where the guest-RAM area starts in the physical-memory file (sim
  // memory_map::guest_start()); a VM's RAM is [guest_area_offset + slice, +ram).
  [[nodiscard]] virtual std::uint64_t guest_area_offset() const = 0;
  [[nodiscard]] virtual std::uint64_t guest_area_bytes() const = 0;
  // Maps [phys_offset, phys_offset + bytes) of the physical-memory file here
  // (MAP_SHARED: the device's DMA and the guest see the same bytes).
  [[nodiscard]] virtual result<std::byte*> map_ram(std::uint64_t phys_offset, std::uint64_t bytes) = 0;
  virtual void unmap_ram(std::byte* mapping, std::uint64_t bytes) = 0;
  // VFIO_IOMMU_MAP_DMA vaddr for RAM at `phys_offset`, mapped here at `mapping`.
  // The sim kernel takes the physical-memory offset; a transport may convert.
  [[nodiscard]] virtual std::uint64_t dma_vaddr(std::uint64_t phys_offset, const void* mapping) const = 0;
  // The host CPU (APIC ID) the vCPU threads run on, for the posted descriptor.
  [[nodiscard]] virtual apic_id host_cpu() const = 0;
  // This VMM process dies: the host closes everything it held (SIGKILL path).
  virtual void exit() = 0;
};

}  // namespace keepalive::minivmm
