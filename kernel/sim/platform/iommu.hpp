// The simulated VT-d unit. It owns no tables: like hardware it reads the
// root/context/second-level tables and the interrupt-remapping table that the
// (sim) kernel wrote into physical memory, on every access (no IOTLB, no
// interrupt-entry cache: a torn-down entry faults immediately, which is the
// strictest behaviour). Every failure is recorded: nothing is dropped silently.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <utility>
#include <vector>

#include "keepalive/types.hpp"
#include "phys_memory.hpp"

namespace keepalive::sim {

enum class dma_fault_reason : std::uint8_t {
  translation_disabled,  // RTADDR not programmed
  root_not_present,
  context_not_present,
  context_invalid,       // reserved bits / unsupported TT or AW
  pte_not_present,       // some level of the second-level walk
  write_not_allowed,
  read_not_allowed,
  address_beyond_width,
  outside_memory,        // translated address is not in physical memory
};
[[nodiscard]] const char* to_string(dma_fault_reason r) noexcept;

struct dma_fault {
  std::uint16_t source_id;
  iova address;
  bool write;
  dma_fault_reason reason;
};

enum class ir_fault_reason : std::uint8_t {
  remapping_disabled,       // IRTA not programmed: interrupt blocked
  compatibility_format,     // a compatibility-format MSI while IR is on (blocked)
  index_out_of_table,
  not_present,
  reserved_bits,
  source_id_mismatch,       // SVT=1 and SID/SQ does not match the requester
  descriptor_outside_memory,
};
[[nodiscard]] const char* to_string(ir_fault_reason r) noexcept;

struct ir_fault {
  std::uint16_t source_id;
  std::uint32_t index;
  ir_fault_reason reason;
};

// A delivered interrupt at a host CPU: (destination APIC ID, vector). For a
// remapped IRTE it is the IRTE's vector; for a posted IRTE it is the
// notification vector NV at NDST, raised only when the post set ON with SN
// clear (or URG). Returns false when no CPU took it (the kernel is down during
// kexec): the interrupt is lost and counted as irq_no_cpu.
// Lock rule for the whole platform: no platform lock is held while calling
// out (sink, DMA, MSI), so the kernel may call into the platform from its
// own handlers and ioctls without lock-order inversions.
using cpu_sink = std::function<bool(apic_id dest, vector v)>;

struct iommu_counters {
  std::uint64_t dma_ok = 0, dma_faults = 0;
  std::uint64_t irq_remapped = 0, irq_posted = 0, irq_notifications = 0, ir_faults = 0;
  std::uint64_t irq_no_cpu = 0;  // delivery attempted while no CPU listened (kernel down): lost
};

class iommu {
 public:
  explicit iommu(phys_memory& mem) : mem_{mem} {}

  // Registers (what the kernel programs). 0 disables.
  void set_root_table(hpa root) noexcept { rtaddr_.store(root.value(), std::memory_order_release); }
  [[nodiscard]] hpa root_table() const noexcept { return hpa{rtaddr_.load(std::memory_order_acquire)}; }
  void set_irta(std::uint64_t irta) noexcept { irta_.store(irta, std::memory_order_release); }
  [[nodiscard]] std::uint64_t irta() const noexcept { return irta_.load(std::memory_order_acquire); }

  // The host CPUs' interrupt entry. Null while the kernel is down (kexec).
  void set_cpu_sink(cpu_sink sink);

  // DMA by device `source_id`. Crosses pages as needed; returns false (and
  // records the fault, without touching memory) if any page faults.
  bool dma_write(std::uint16_t source_id, iova addr, std::span<const std::byte> data);
  bool dma_read(std::uint16_t source_id, iova addr, std::span<std::byte> out);

  // A device's MSI write (address/data from its MSI-X entry).
  void msi(std::uint16_t source_id, std::uint64_t address, std::uint32_t data);

  // Interrupt entry cache invalidation (VT-d 6.5.2.7, what Linux's
  // modify_irte() issues after every IRTE update): returns once every
  // interrupt that read an IRTE before the call has finished remapping —
  // posted into its descriptor's PIR, or handed on towards its CPU. An
  // interrupt arriving later sees the new entry. So software may, after it,
  // move what the old entry's descriptor holds without racing a late post.
  void invalidate_interrupt_entries();

  [[nodiscard]] iommu_counters counters() const;
  [[nodiscard]] std::uint64_t dma_faults_for(std::uint16_t source_id) const;
  [[nodiscard]] std::vector<dma_fault> recent_dma_faults() const;  // last 64
  [[nodiscard]] std::vector<ir_fault> recent_ir_faults() const;    // last 64

  // CAP.PI. Without it the IRTE's IM bit is reserved: a posted entry faults (reserved_bits).
  void set_posted_interrupts(bool supported) noexcept { posted_.store(supported, std::memory_order_release); }
  [[nodiscard]] bool posted_interrupts() const noexcept { return posted_.load(std::memory_order_acquire); }

 private:
  struct chunk {
    hpa at;
    std::uint64_t len;
  };
  static constexpr std::size_t fault_log_size = 64;

  bool translate_range(std::uint16_t source_id, iova addr, std::uint64_t len, bool write, std::vector<chunk>& out);
  void record(const dma_fault& f);
  void record(const ir_fault& f);
  void deliver(apic_id dest, vector v);

  phys_memory& mem_;
  // Held shared from an interrupt's IRTE lookup until its post (never across
  // a delivery to a CPU); taken exclusively by invalidate_interrupt_entries().
  std::shared_mutex remapping_;
  std::atomic<std::uint64_t> rtaddr_{0}, irta_{0};
  std::atomic<bool> posted_{true};
  struct atomic_counters {
    std::atomic<std::uint64_t> dma_ok{0}, dma_faults{0};
    std::atomic<std::uint64_t> irq_remapped{0}, irq_posted{0}, irq_notifications{0}, ir_faults{0};
    std::atomic<std::uint64_t> irq_no_cpu{0};
  } ctr_;
  mutable std::mutex mu_;  // fault logs, per-SID counts, sink
  std::shared_ptr<const cpu_sink> sink_;
  std::vector<dma_fault> dma_log_;  // ring of fault_log_size, oldest at dma_next_ once full
  std::size_t dma_next_ = 0;
  std::vector<ir_fault> ir_log_;
  std::size_t ir_next_ = 0;
  std::vector<std::pair<std::uint16_t, std::uint64_t>> faults_by_sid_;
};

}  // namespace keepalive::sim
