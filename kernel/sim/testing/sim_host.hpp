// Test and benchmark support: a whole simulated host in one process
// (platform + sim kernel), a VMM that drives a NIC through the uapi exactly as
// a real VMM drives VFIO, and a stand-in guest that consumes the RX ring from
// guest RAM and verifies every packet. The guest outlives VMM restarts (as a
// real guest does); only the VMM process comes and goes.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <functional>
#include <mutex>
#include <thread>

#include "keepalive/abi/ops.hpp"
#include "kernel.hpp"
#include "nic_regs.h"
#include "platform.hpp"

namespace keepalive::sim::testing {

struct guest_layout {
  std::uint64_t ram_bytes = 16ull << 20;   // guest RAM, identity IOVA = GPA
  std::uint64_t ring_gpa = 0x10000;        // descriptor ring
  std::uint32_t ring_entries = 16384;  // 164 ms at 100k packets/s: room for a starved consumer
  std::uint64_t buffers_gpa = 0x100000;    // ring_entries buffers of buffer_bytes
  std::uint32_t buffer_bytes = 256;
  std::uint32_t payload_bytes = 64;
};

// The NIC as the guest sees it: its BAR registers. In-process, guest MMIO
// goes straight to the device (as through a BAR mapped into the guest);
// over the daemon, through whichever VMM owns the device now.
struct device_access {
  std::function<std::optional<std::uint64_t>(std::uint64_t reg)> read;
  std::function<bool(std::uint64_t reg, std::uint64_t value)> write;
};
[[nodiscard]] device_access direct_access(pci_function& fn);

// The guest's driver and its verification: consumes completed descriptors
// when its interrupt (an eventfd standing in for the guest vector) fires.
// Its state lives in guest RAM and here, never in a VMM: it outlives them.
class guest {
 public:
  guest(std::byte* ram, const guest_layout& layout, device_access dev);
  guest(platform& plat, hpa ram, const guest_layout& layout, bdf nic);
  virtual ~guest();
  guest(const guest&) = delete;
  guest& operator=(const guest&) = delete;
  void attach(device_access dev);
  void detach();
  bool init_ring();          // what the guest driver does at probe: zero ring, fill buffers, enable
  void start();              // consumer thread
  void pause() { paused_ = true; }    // vCPUs paused: nothing consumed
  void resume() { paused_ = false; }
  void stop();
  void poll_once() { consume(); }  // consume what is completed now, without an interrupt
  [[nodiscard]] int irq_fd() const noexcept { return irq_fd_; }
  [[nodiscard]] std::byte* ram() const noexcept { return ram_; }
  // Counters from the guest's own verification.
  std::atomic<std::uint64_t> received{0}, corrupted{0}, gaps{0}, lost_seqs{0}, interrupts{0};
  std::atomic<std::uint64_t> tail_write_failures{0};

 private:
  void run();
  void consume();
  std::byte* ram_;
  guest_layout layout_;
  int irq_fd_ = -1;
  std::mutex dev_mu_;
  device_access dev_;
  std::uint32_t next_ = 0;
  std::uint64_t expected_seq_ = 0;
  bool initialised_ = false;
  std::atomic<bool> stop_{false}, paused_{false};
  std::thread thread_;
};

// The VFIO flow of a test VMM over any syscall seam (the in-process sim
// kernel or the daemon transport): open the NIC plainly or with the token,
// map guest RAM at IOVA 0, MSI-X vector 0 through the guest's eventfd, posted
// into a new VM's descriptor where the host can post. Every in/out struct is
// checked to come back as sent (the transport marshals them).
class vfio_flow {
 public:
  // ram_vaddr: what MAP_DMA gets (in-process: the offset of guest RAM in the
  // phys memfd; over the daemon: the VMM's own mapping of it; 0: none).
  vfio_flow(abi::syscalls& sys, bdf nic, std::uint64_t ram_bytes, std::uint64_t ram_vaddr, int irq_fd);
  status open_device(const std::optional<token>& t);
  status connect_vector();
  // Cold start after open: bus master, vector, moderation, the guest driver's ring, rate.
  status start_nic(guest& g, std::uint64_t rate_pps, std::uint32_t irq_mod_pkts, std::uint32_t irq_mod_usec);
  // The fd hand-over way (QEMU CPR), done in place: device fds stay open,
  // the guest RAM mapping's vaddr is invalidated and re-pointed, the vector
  // re-wired to a new VM's descriptor. No keepalive state in the kernel.
  status fd_handoff();
  status write_reg(std::uint64_t off, std::uint64_t v);
  result<std::uint64_t> read_reg(std::uint64_t off);
  [[nodiscard]] device_access access();
  [[nodiscard]] abi::syscalls& sys() noexcept { return sys_; }
  [[nodiscard]] int device_fd() const noexcept { return device_; }
  [[nodiscard]] int container_fd() const noexcept { return container_; }

 private:
  abi::syscalls& sys_;
  bdf nic_;
  std::uint64_t ram_bytes_, ram_vaddr_;
  int irq_fd_;
  int container_ = -1, group_ = -1, device_ = -1, vm_ = -1;
};

// A VMM process's view: one passthrough NIC, its DMA mapping, one vector
// posted into a vCPU descriptor whose delivery signals the guest's eventfd.
class vmm {
 public:
  vmm(kernel& k, std::string name, guest& g, const guest_layout& layout, hpa guest_ram, bdf nic);
  // First start: open, map, program the NIC, set up MSI-X, connect to a vCPU.
  status cold_start(std::uint64_t rate_pps, std::uint32_t irq_mod_pkts = 16, std::uint32_t irq_mod_usec = 200);
  // Restart: reclaim with the token (or open plainly when token is empty),
  // reconnect the vector, drain, leave keepalive.
  status reclaim(const std::optional<token>& t);
  // Reclaim and stop there: the device is RECLAIMED until leave_keepalive().
  status reopen(const token& t) { return flow_.open_device(t); }
  result<abi::enter_reply> enter_keepalive(const token& t) { return abi::keepalive_enter(*proc_, flow_.device_fd(), t); }
  status leave_keepalive(const token& t) { return abi::keepalive_leave(*proc_, flow_.device_fd(), t); }
  void exit();  // the process dies (closes everything, like SIGKILL)
  status fd_handoff() { return flow_.fd_handoff(); }
  [[nodiscard]] abi::syscalls& sys() { return *proc_; }
  [[nodiscard]] int device_fd() const noexcept { return flow_.device_fd(); }
  [[nodiscard]] int container_fd() const noexcept { return flow_.container_fd(); }
  status set_rate(std::uint64_t pps) { return flow_.write_reg(KA_NIC_RATE_PPS, pps); }
  status write_reg(std::uint64_t off, std::uint64_t v) { return flow_.write_reg(off, v); }
  result<std::uint64_t> read_reg(std::uint64_t off) { return flow_.read_reg(off); }

 private:
  std::shared_ptr<process> proc_;
  guest& guest_;
  vfio_flow flow_;
};

}  // namespace keepalive::sim::testing
