// The streaming NIC-like PCI function (programming model in nic_regs.h).
// A thread generates packets at RATE_PPS, DMA-reads RX descriptors and
// DMA-writes packets through the IOMMU, raises MSI-X vector 0 with
// moderation, and counts drops when the ring is full. It never stops by itself:
// only clearing Bus Master / Memory Space / CTRL.ENABLE, or an FLR, stops it.
// RATE_PPS and NEXT_SEQ belong to the wire (the link partner): they survive FLR,
// and every packet due while the function cannot DMA (reset, Bus Master or
// ENABLE or MSI-X off, bad ring/payload setup) is counted as a drop, so a reset
// shows up as a sequence gap. A masked vector (entry or function mask) only
// holds its message in the PBA; the device keeps receiving. Writing RX_RING_BASE
// or RX_RING_SIZE resets HEAD to 0. Register writes that can stop the device
// return only after the packet in flight has finished its DMA.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "iommu.hpp"
#include "keepalive/hw/pci.hpp"
#include "nic_regs.h"
#include "pci.hpp"

namespace keepalive::sim {

struct nic_stats {
  std::uint64_t packets = 0, drops = 0, irqs = 0, dma_errors = 0, next_seq = 0, resets = 0;
  std::uint64_t irqs_masked = 0;  // messages held in the PBA because the vector was masked
};

class nic final : public pci_function {
 public:
  // flr_wait: how long an FLR holds the caller (PCIe: 100 ms before software may
  // touch the function again); the reset itself is synchronous either way.
  nic(bdf address, iommu& unit, unsigned msix_vectors = KA_NIC_MSIX_VECTORS,
      std::chrono::milliseconds flr_wait = std::chrono::milliseconds{hw::pci::flr_wait_ms});
  ~nic() override;

  std::uint32_t config_read(std::uint16_t offset, unsigned size) override;
  void config_write(std::uint16_t offset, unsigned size, std::uint32_t value) override;
  std::uint64_t mmio_read(unsigned bar, std::uint64_t offset, unsigned size) override;
  void mmio_write(unsigned bar, std::uint64_t offset, unsigned size, std::uint64_t value) override;
  std::uint64_t bar_size(unsigned bar) const override { return bar == 0 ? KA_NIC_BAR0_SIZE : 0; }
  void function_level_reset() override;
  std::uint64_t resets() const override { return resets_.load(); }

  [[nodiscard]] nic_stats stats() const;

 private:
  using clock = std::chrono::steady_clock;
  struct msix_entry {
    std::uint64_t address = 0;
    std::uint32_t data = 0;
    std::uint32_t control = 1;  // bit 0: masked
  };
  struct counters {
    std::uint64_t packets = 0, drops = 0, irqs = 0, dma_errors = 0, irqs_masked = 0;
  };
  struct msi_message {
    std::uint64_t address;
    std::uint32_t data;
  };

  void run();
  // Called with mu_ held (through lk); unlocks around DMA and MSI.
  void generate_due(std::unique_lock<std::mutex>& lk, clock::time_point now);
  bool receive_one(std::unique_lock<std::mutex>& lk, std::uint64_t seq);
  void signal(std::unique_lock<std::mutex>& lk);
  void deliver_pending(std::unique_lock<std::mutex>& lk);
  void send(std::unique_lock<std::mutex>& lk, msi_message m);
  void reset_locked();
  void wait_idle(std::unique_lock<std::mutex>& lk);
  void poke() noexcept;
  void set_rate(std::uint64_t pps);
  [[nodiscard]] bool can_receive() const noexcept;
  [[nodiscard]] bool can_signal() const noexcept;
  [[nodiscard]] bool vector_masked(unsigned v) const noexcept;
  [[nodiscard]] std::uint16_t command() const noexcept;
  [[nodiscard]] std::uint16_t msix_control() const noexcept;
  [[nodiscard]] std::uint64_t reg_read(std::uint64_t reg) const noexcept;
  void reg_write(std::uint64_t reg, std::uint64_t value);

  iommu& unit_;
  std::chrono::milliseconds flr_wait_;
  mutable std::mutex mu_;
  std::condition_variable cv_;       // device thread: register writes, stop
  std::condition_variable idle_cv_;  // writers: in-flight DMA finished
  std::atomic<std::uint64_t> resets_{0};
  std::atomic<int> mmio_waiting_{0};  // drivers waiting for mu_: the device thread yields to them
  bool stop_ = false;
  bool wake_ = false;
  bool in_flight_ = false;  // the device thread is doing DMA outside mu_
  unsigned writers_waiting_ = 0;  // writers that need the device between two packets

  std::array<std::uint8_t, 4096> config_{};
  std::array<std::uint8_t, 4096> wmask_{};
  std::uint64_t ctrl_ = 0, ring_base_ = 0, ring_size_ = 0, head_ = 0, tail_ = 0;
  std::uint64_t mod_pkts_ = 0, mod_usec_ = 0, payload_len_ = 0;
  std::vector<msix_entry> msix_;
  std::uint64_t pba_ = 0;

  // The wire (link partner): survives FLR.
  std::uint64_t rate_pps_ = 0, next_seq_ = 0;
  clock::time_point sched_start_{};
  std::uint64_t sched_k_ = 0;  // packets generated since sched_start_

  std::uint64_t unsignalled_ = 0;
  clock::time_point first_unsignalled_{};

  counters total_;     // since power-on: stats()
  counters at_reset_;  // total_ at the last FLR: MMIO STAT_* show the difference
  std::thread thread_;
};

}  // namespace keepalive::sim
