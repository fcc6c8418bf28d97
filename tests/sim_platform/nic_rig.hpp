// A host-side driver for the simulated NIC: programs config space, MSI-X (through a remapped
// IRTE), the IOMMU mapping and the RX ring, and consumes packets on a thread, verifying every
// one.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <thread>

#include "fixture.hpp"
#include "platform.hpp"

namespace keepalive::sim::test {

using namespace std::chrono_literals;

// Polls `pred` for up to `limit`.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 2000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(200us);
  }
  return true;
}

class nic_rig {
 public:
  static constexpr std::uint64_t iova_offset = 0x10'0000'0000ull;  // identity-ish: iova = hpa + offset
  static constexpr hpa ir_base{4ull << 20};
  static constexpr hpa dma_area{8ull << 20};               // ring, then buffers
  static constexpr std::uint64_t dma_bytes = 10ull << 20;  // ring, then up to 4096 buffers
  static constexpr std::uint64_t buffer_bytes = 2048;
  static constexpr std::uint8_t irq_vector = 0x40;
  static constexpr std::uint32_t payload = 64;

  explicit nic_rig(std::uint32_t ring = 256) : ring_size_{ring} {
    auto made = platform::create({.phys_bytes = 32ull << 20, .nics = 2});
    REQUIRE(made);
    plat_ = std::move(*made);
    dev_ = plat_->find_nic(bdf{0, 0, 4, 0});
    REQUIRE(dev_ != nullptr);
    tables_ = std::make_unique<translation_tables>(plat_->memory());
    irt_ = std::make_unique<ir_table>(plat_->memory(), ir_base, hw::apic_mode::x2apic);

    tables_->attach(dev_->address());
    tables_->map(dev_->address(), iova{dma_area.value() + iova_offset}, dma_area, dma_bytes, hw::perm::read_write);
    plat_->vtd().set_root_table(tables_->root());
    irt_->set(0, hw::make_remapped({.vec = vector{irq_vector}, .destination = apic_id{0}, .sid = dev_->source_id()}));
    plat_->vtd().set_irta(irt_->irta());
    plat_->vtd().set_cpu_sink([this](apic_id, vector v) {
      if (v.value() == irq_vector) irqs_.fetch_add(1);
      {
        std::lock_guard lk{mu_};
        kicked_ = true;
      }
      cv_.notify_one();
      return true;
    });

    // Ring: descriptor i owns buffer i.
    for (std::uint32_t i = 0; i < ring_size_; ++i) {
      mem().store64(desc_hpa(i), buffer_hpa(i).value() + iova_offset);
      mem().store64(desc_hpa(i) + 8, 0);
    }
    // PCI: BAR0, memory + bus master, MSI-X entry 0 -> IRTE 0, enable.
    dev_->config_write(hw::pci::bar_offset(0), 4, 0xfebf0000);
    dev_->config_write(hw::pci::bar_offset(1), 4, 0);
    set_command(hw::pci::command_memory_space | hw::pci::command_bus_master);
    const auto msg = hw::encode_remappable(irte_index{0}, std::uint16_t{0});
    mmio64(KA_NIC_MSIX_TABLE_OFF, msg.address());
    dev_->mmio_write(0, KA_NIC_MSIX_TABLE_OFF + 8, 4, msg.data);
    dev_->mmio_write(0, KA_NIC_MSIX_TABLE_OFF + 12, 4, 0);  // unmask
    set_msix_control(hw::msix_cap::control_enable);

    mmio64(KA_NIC_RX_RING_BASE, desc_hpa(0).value() + iova_offset);
    mmio64(KA_NIC_RX_RING_SIZE, ring_size_);
    mmio64(KA_NIC_PAYLOAD_LEN, payload);
    mmio64(KA_NIC_IRQ_MOD_PKTS, 32);
    mmio64(KA_NIC_IRQ_MOD_USEC, 100);
    mmio64(KA_NIC_RX_TAIL, ring_size_ - 1);
    mmio64(KA_NIC_CTRL, KA_NIC_CTRL_ENABLE);
  }
  ~nic_rig() {
    stop_consumer();
    plat_.reset();  // device threads stop before the sink's state goes
  }

  nic_rig(const nic_rig&) = delete;
  nic_rig& operator=(const nic_rig&) = delete;

  [[nodiscard]] phys_memory& mem() { return plat_->memory(); }
  [[nodiscard]] iommu& vtd() { return plat_->vtd(); }
  [[nodiscard]] nic& dev() { return *dev_; }
  [[nodiscard]] platform& plat() { return *plat_; }
  [[nodiscard]] translation_tables& tables() { return *tables_; }
  [[nodiscard]] std::uint32_t ring_size() const { return ring_size_; }
  [[nodiscard]] hpa desc_hpa(std::uint32_t i) const { return dma_area + std::uint64_t{i} * 16; }
  [[nodiscard]] hpa buffer_hpa(std::uint32_t i) const { return dma_area + 0x10000 + std::uint64_t{i} * buffer_bytes; }

  void mmio64(std::uint64_t reg, std::uint64_t v) { dev_->mmio_write(0, reg, 8, v); }
  [[nodiscard]] std::uint64_t reg(std::uint64_t r) { return dev_->mmio_read(0, r, 8); }
  [[nodiscard]] std::uint8_t msix_cap() {
    const auto at = hw::pci::find_capability(
        [this](std::uint16_t off) { return static_cast<std::uint8_t>(dev_->config_read(off, 1)); },
        hw::pci::cap_id::msix);
    REQUIRE(at);
    return *at;
  }
  void set_command(std::uint16_t v) { dev_->config_write(hw::pci::command, 2, v); }
  void set_msix_control(std::uint16_t v) { dev_->config_write(msix_cap() + hw::msix_cap::message_control, 2, v); }

  // ---- the consumer ("driver") ----
  struct tally {
    std::uint64_t received = 0, corrupt = 0, gap_packets = 0, backwards = 0, next_seq = 0;
  };

  // Consumes every completed descriptor from `next_`; returns how many.
  std::uint64_t consume() {
    std::uint64_t n = 0;
    for (;;) {
      const hpa d = desc_hpa(next_);
      const std::uint64_t w = mem().load64(d + 8);
      if ((w >> 16 & KA_NIC_DESC_DD) == 0) break;
      check_packet(next_, static_cast<std::uint16_t>(w));
      mem().store64(d + 8, 0);
      next_ = (next_ + 1) % ring_size_;
      ++n;
    }
    if (n != 0) mmio64(KA_NIC_RX_TAIL, (next_ + ring_size_ - 1) % ring_size_);
    return n;
  }

  void start_consumer() {
    stop_ = false;
    consumer_ = std::thread{[this] {
      std::unique_lock lk{mu_};
      while (!stop_) {
        kicked_ = false;
        lk.unlock();
        consume();
        lk.lock();
        cv_.wait_for(lk, 200us, [this] { return stop_ || kicked_; });
      }
    }};
  }
  void stop_consumer() {
    {
      std::lock_guard lk{mu_};
      stop_ = true;
    }
    cv_.notify_one();
    if (consumer_.joinable()) consumer_.join();
  }
  [[nodiscard]] tally seen() {
    std::lock_guard lk{tally_mu_};
    return tally_;
  }
  [[nodiscard]] std::uint64_t irqs() const { return irqs_.load(); }

  // The seq in a completed buffer (for tests that do not run the consumer).
  [[nodiscard]] std::uint64_t seq_in(std::uint32_t i) { return mem().load64(buffer_hpa(i)); }

 private:
  void check_packet(std::uint32_t i, std::uint16_t length) {
    const std::byte* b = mem().base() + buffer_hpa(i).value();
    ka_nic_packet_hdr h{};
    std::memcpy(&h, b, sizeof h);
    const auto* pl = reinterpret_cast<const std::uint8_t*>(b + sizeof h);
    bool ok = length == sizeof h + payload && h.payload_len == payload &&
              h.checksum == ka_nic_checksum(h.seq, pl, h.payload_len);
    for (std::uint32_t k = 0; ok && k < payload; ++k) ok = pl[k] == ka_nic_payload_byte(h.seq, k);
    std::lock_guard lk{tally_mu_};
    ++tally_.received;
    if (!ok) ++tally_.corrupt;
    if (h.seq < tally_.next_seq)
      ++tally_.backwards;
    else
      tally_.gap_packets += h.seq - tally_.next_seq;
    tally_.next_seq = h.seq + 1;
  }

  std::unique_ptr<platform> plat_;
  nic* dev_ = nullptr;
  std::unique_ptr<translation_tables> tables_;
  std::unique_ptr<ir_table> irt_;
  std::uint32_t ring_size_;
  std::uint32_t next_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool kicked_ = false;
  bool stop_ = false;
  std::thread consumer_;
  std::atomic<std::uint64_t> irqs_{0};
  std::mutex tally_mu_;
  tally tally_;
};

}  // namespace keepalive::sim::test
