// snapshot.hpp — the VMM's own state that must cross a restart, and its wire
// format. Guest RAM is never in it: RAM lives in a shared memory file that the
// next VMM maps again (QEMU's x-ignore-shared); the snapshot names where.
//
// CONTENT
//  token     the keepalive token every device entered with (never nil).
//  nr_vcpus  vCPUs of the VM; every vcpu number below is < nr_vcpus.
//  devices   in session order: BDF, VFIO group number, the irq mode the
//            kernel chose at enter, and each MSI-X vector in use (index, the
//            guest vector it is routed to, the vCPU that receives it).
//  ram       guest RAM regions: GPA, IOVA, size, the caller's vaddr at
//            freeze, and the backing (a shared memory file path or memfd name)
//            with the offset of the region in it. The next VMM maps the
//            backing, sets `vaddr` to where it mapped it, and reclaims.
//  vcpu      opaque per-vCPU blobs tagged by kind (KVM_GET_REGS, _SREGS,
//            _FPU, _LAPIC, _MSRS, _VCPU_EVENTS, _XCRS, ... as the VMM gives
//            them); the library never interprets the bytes.
//  extra     one opaque blob of VMM-defined state.
//
// WIRE FORMAT (all integers little-endian; every record 8-byte aligned;
// padding and reserved bytes are zero)
//   header, 96 bytes
//     0  u32 magic 0x4e53414b ("KASN" in file order)
//     4  u32 CRC-32C of the whole snapshot computed with this field zero
//     8  u64 total bytes
//    16  char[32] compatible "keepalive-snapshot-v1", NUL-padded: the version
//    48  u8[16] token
//    64  u32 nr_vcpus   68 u32 nr_devices   72 u32 nr_ram   76 u32 nr_blobs
//    80  u64 extra bytes
//    88  u64 reserved
//   nr_devices x device, 16 bytes, each followed by its vectors
//     0 u32 bdf (seg<<16|bus<<8|devfn)  4 u32 group  8 u16 nr_vectors
//    10 u8 irq_mode (enum vfio_keepalive_irq_mode)  11 u8 + 12 u32 reserved
//     vector, 8 bytes: 0 u16 msix index  2 u8 guest vector  3 u8 reserved
//                      4 u32 vcpu
//   nr_ram x region, 48 bytes + backing name padded to 8
//     0 u64 gpa  8 u64 iova  16 u64 bytes  24 u64 vaddr  32 u64 backing
//     offset  40 u32 backing name length  44 u32 reserved
//   nr_blobs x vcpu blob, 16 bytes + data padded to 8
//     0 u32 vcpu  4 u32 tag  8 u64 length
//   extra data, padded to 8
//
// The decoder trusts nothing: a short or padded buffer, a bad magic, an
// unknown compatible string (another version), a checksum mismatch, a
// non-zero reserved or padding byte, or content that is inconsistent (see
// validate() below) is errc::protocol with the reason; nothing of a refused
// snapshot is returned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <keepalive/abi/ops.hpp>
#include <keepalive/error.hpp>
#include <keepalive/types.hpp>

namespace keepalive {

inline constexpr std::uint32_t snapshot_magic = 0x4e53414bu;
inline constexpr std::string_view snapshot_compatible = "keepalive-snapshot-v1";
inline constexpr std::size_t snapshot_header_bytes = 96;

// Limits the decoder enforces (anything larger is corrupt, not big).
inline constexpr std::uint32_t snapshot_max_vcpus = 4096;
inline constexpr std::uint32_t snapshot_max_devices = 256;
inline constexpr std::uint32_t snapshot_max_vectors = 2048;  // MSI-X table size limit
inline constexpr std::uint32_t snapshot_max_ram = 1024;
inline constexpr std::uint32_t snapshot_max_backing_name = 4096;
inline constexpr std::uint64_t snapshot_max_bytes = 256ull << 20;

// What a vCPU blob holds. Values 1..11 name KVM's vCPU state ioctls; a VMM
// may use its own tags from vmm_private upward. 0 and 12..0xffff are refused.
enum class vcpu_state_tag : std::uint32_t {
  regs = 1,       // KVM_GET_REGS
  sregs = 2,      // KVM_GET_SREGS / SREGS2
  fpu = 3,        // KVM_GET_FPU
  lapic = 4,      // KVM_GET_LAPIC
  msrs = 5,       // KVM_GET_MSRS
  events = 6,     // KVM_GET_VCPU_EVENTS
  xcrs = 7,       // KVM_GET_XCRS
  xsave = 8,      // KVM_GET_XSAVE2
  debugregs = 9,  // KVM_GET_DEBUGREGS
  mp_state = 10,  // KVM_GET_MP_STATE
  cpuid = 11,     // KVM_GET_CPUID2
  vmm_private = 0x10000,
};
[[nodiscard]] bool known_vcpu_state_tag(std::uint32_t tag) noexcept;
[[nodiscard]] std::string vcpu_state_tag_name(vcpu_state_tag tag);

struct vector_route {
  msix_index msix;
  vector guest_vector;   // >= 0x10 (0..15 are exceptions)
  std::uint32_t vcpu = 0;
  friend bool operator==(const vector_route&, const vector_route&) = default;
};

struct snapshot_device {
  bdf address;
  std::uint32_t group = 0;  // /dev/vfio/<group>
  abi::irq_mode mode = abi::irq_mode::none;
  std::vector<vector_route> vectors;
  friend bool operator==(const snapshot_device&, const snapshot_device&) = default;
};

struct ram_region {
  gpa guest;
  iova io;
  std::uint64_t bytes = 0;
  std::uint64_t vaddr = 0;  // VFIO_IOMMU_MAP_DMA vaddr (sim: offset in physical memory)
  std::string backing;      // shared memory file or memfd name the RAM lives in
  std::uint64_t backing_offset = 0;
  friend bool operator==(const ram_region&, const ram_region&) = default;
};

struct vcpu_blob {
  std::uint32_t vcpu = 0;
  vcpu_state_tag tag = vcpu_state_tag::regs;
  std::vector<std::byte> bytes;
  friend bool operator==(const vcpu_blob&, const vcpu_blob&) = default;
};

struct snapshot {
  token owner;
  std::uint32_t nr_vcpus = 0;
  std::vector<snapshot_device> devices;
  std::vector<ram_region> ram;
  std::vector<vcpu_blob> vcpu_state;
  std::vector<std::byte> extra;

  [[nodiscard]] const vcpu_blob* find(std::uint32_t vcpu, vcpu_state_tag tag) const noexcept;
  friend bool operator==(const snapshot&, const snapshot&) = default;
};

// The reason a snapshot is inconsistent, or nullopt. Checked: non-nil token;
// 1 <= nr_vcpus <= max; devices unique by BDF, irq mode in range, vectors
// unique by MSI-X index, guest vector >= 0x10, vcpu < nr_vcpus; RAM regions
// non-empty, 4 KiB aligned (gpa, iova, bytes, vaddr, backing offset), not
// wrapping, neither GPA nor IOVA ranges overlapping, backing name printable;
// vCPU blobs with a known tag, vcpu < nr_vcpus, one per (vcpu, tag); every
// count and length within the limits above.
[[nodiscard]] std::optional<std::string> validate(const snapshot& s);

// errc::invalid (with validate()'s reason) for an inconsistent snapshot.
[[nodiscard]] result<std::vector<std::byte>> encode_snapshot(const snapshot& s);
[[nodiscard]] result<snapshot> decode_snapshot(std::span<const std::byte> bytes);

// Whole snapshot to/from a file, pipe or socket (loops over short I/O and
// EINTR). read_snapshot reads exactly the header's total length.
[[nodiscard]] status write_snapshot(int fd, const snapshot& s);
[[nodiscard]] result<snapshot> read_snapshot(int fd);

// Human-readable, one fact per line (keepalivectl prints this).
[[nodiscard]] std::string describe(const snapshot& s);

}  // namespace keepalive
