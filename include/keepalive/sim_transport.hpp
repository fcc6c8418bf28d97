// The syscall seam onto a keepalive-simd daemon (the simulated host) over its
// Unix socket: a VMM or a tool written against real VFIO runs unchanged on
// the sim by using a sim_transport instead of linux_syscalls(). The wire
// protocol is documented in kernel/sim/daemon/wire.hpp.
//
// The connection is one process of the sim kernel: fd numbers are sim fd
// numbers; destroying the transport (or the client dying) is that process
// exiting. Guest RAM is a slice of the host's physical-memory memfd: map it
// with map_phys() and pass pointers into that mapping as VFIO_IOMMU_MAP_DMA's
// vaddr, exactly as against real VFIO; the transport turns them into memfd
// offsets. Thread-safe: requests are serialised on the connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keepalive/abi/syscalls.hpp"
#include "keepalive/error.hpp"
#include "keepalive/types.hpp"

namespace keepalive {

struct sim_host_info {
  std::uint32_t abi_version = 0;     // VFIO_KEEPALIVE_ABI_VERSION of the host
  bool baseline = false;             // an unpatched kernel (no keepalive)
  bool posted_interrupts = false;    // VT-d CAP.PI
  std::uint64_t phys_bytes = 0;      // size of the physical-memory memfd
  std::uint64_t guest_start = 0;     // guest RAM area starts here (memfd offset)
  std::uint64_t handover_start = 0;  // stage-2 image region
  std::uint64_t handover_bytes = 0;
  std::vector<bdf> functions;        // the PCI functions (NICs)
};

class sim_transport final : public abi::syscalls {
 public:
  // $KEEPALIVE_SIMD_SOCKET, else /run/keepalive-simd.sock.
  [[nodiscard]] static std::string default_socket_path();
  // Connects and says hello (receives the memfd). An empty path means default_socket_path().
  static result<std::unique_ptr<sim_transport>> connect(std::string_view path = {});
  ~sim_transport() override;
  sim_transport(const sim_transport&) = delete;
  sim_transport& operator=(const sim_transport&) = delete;

  // abi::syscalls. ioctl arguments larger than 64 KiB are -E2BIG (not carried);
  // commands the sim host does not implement are -ENOTTY.
  long ioctl(int fd, unsigned long cmd, void* arg) override;
  result<int> open(std::string_view path, int flags) override;
  errc close(int fd) override;
  result<std::size_t> pread(int fd, std::span<std::byte> out, std::uint64_t offset) override;
  result<std::size_t> pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) override;

  [[nodiscard]] int phys_fd() const noexcept { return phys_fd_; }
  [[nodiscard]] std::uint64_t phys_size() const noexcept { return host_.phys_bytes; }
  [[nodiscard]] std::uint64_t guest_start() const noexcept { return host_.guest_start; }
  [[nodiscard]] const sim_host_info& host() const noexcept { return host_; }

  // mmap(MAP_SHARED) of [offset, offset + len) of the physical memory; offset
  // page aligned. Unmapped by unmap_phys() or when the transport is destroyed.
  // nullptr (errno set) on failure.
  [[nodiscard]] void* map_phys(std::uint64_t offset, std::uint64_t len);
  void unmap_phys(void* addr);
  // The memfd offset of an address inside a map_phys() mapping of `len` bytes.
  [[nodiscard]] std::optional<std::uint64_t> phys_offset(const void* addr, std::uint64_t len) const;

  // Host control. kexec: stage-2 kexec of the host; every other connection is
  // dropped, and this one continues as a new process (all its fds are gone).
  status kexec();
  result<std::string> stats_json();
  result<std::string> describe();

 private:
  struct mapping {
    std::byte* base;
    std::uint64_t offset, len;
  };
  sim_transport(int sock, int phys_fd, sim_host_info host) : sock_{sock}, phys_fd_{phys_fd}, host_{std::move(host)} {}
  long call(std::uint16_t op, int fd, std::uint64_t cmd, std::uint64_t arg, std::span<const std::byte> payload,
            std::span<const int> files, std::vector<std::byte>* reply_payload, int* reply_file);
  long call_ioctl(int fd, unsigned long cmd, void* arg);
  result<std::string> text_request(std::uint16_t op, const char* what);

  int sock_ = -1;
  int phys_fd_ = -1;
  sim_host_info host_;
  std::mutex mu_;  // one request outstanding on the socket; guards reply_buf_
  std::vector<std::byte> reply_buf_;
  mutable std::mutex maps_mu_;
  std::vector<mapping> maps_;
};

}  // namespace keepalive
