#include "nic.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>
#include <optional>

#include <keepalive/hw/msi.hpp>
#include <keepalive/hw/pci.hpp>

namespace keepalive::sim {
namespace {

using namespace std::chrono_literals;

namespace pci = hw::pci;

// Config space layout: MSI-X capability, then PCIe capability.
constexpr std::uint16_t cap_msix = pci::cap_first_offset;
constexpr std::uint16_t cap_pcie = cap_msix + 0x10;
constexpr std::uint16_t msix_control_reg = cap_msix + hw::msix_cap::message_control;
constexpr std::uint16_t pcie_devctl = cap_pcie + pci::pcie_device_control;
constexpr std::uint16_t devctl_default = 0x2810;  // relaxed ordering, no snoop, MRRS 512

constexpr std::uint64_t max_rate_pps = 100'000'000;
constexpr std::uint64_t max_batch = 8192;
constexpr auto idle_step = 150us;
constexpr std::uint32_t max_payload = 1024;
constexpr std::uint32_t hdr_bytes = sizeof(ka_nic_packet_hdr);

static_assert(sizeof(ka_nic_rx_desc) == 16);
static_assert(offsetof(ka_nic_rx_desc, length) == 8 && offsetof(ka_nic_rx_desc, status) == 10);
static_assert(sizeof(ka_nic_packet_hdr) == 16);
static_assert(offsetof(ka_nic_packet_hdr, payload_len) == 8 && offsetof(ka_nic_packet_hdr, checksum) == 12);

std::uint64_t all_ones(unsigned size) noexcept {
  return size >= 8 ? std::numeric_limits<std::uint64_t>::max() : (std::uint64_t{1} << (size * 8)) - 1;
}

bool ring_size_valid(std::uint64_t n) noexcept { return n != 0 && n <= 65536 && (n & (n - 1)) == 0; }
bool payload_len_valid(std::uint64_t n) noexcept { return n >= 4 && n <= max_payload && n % 4 == 0; }

}  // namespace

nic::nic(bdf address, iommu& unit, unsigned msix_vectors, std::chrono::milliseconds flr_wait)
    : pci_function{address}, unit_{unit}, flr_wait_{flr_wait}, msix_(msix_vectors) {
  std::unique_lock lk{mu_};
  reset_locked();
  thread_ = std::thread{[this] { run(); }};
}

nic::~nic() {
  {
    std::lock_guard lk{mu_};
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

// ---- config space -------------------------------------------------------

void nic::reset_locked() {
  auto put = [this](std::uint16_t off, unsigned size, std::uint32_t v, std::uint32_t wmask) {
    for (unsigned i = 0; i < size; ++i) {
      config_[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
      wmask_[off + i] = static_cast<std::uint8_t>(wmask >> (8 * i));
    }
  };
  config_.fill(0);
  wmask_.fill(0);
  put(pci::vendor_id, 2, KA_NIC_VENDOR_ID, 0);
  put(pci::device_id, 2, KA_NIC_DEVICE_ID, 0);
  put(pci::command, 2, 0, pci::command_memory_space | pci::command_bus_master | pci::command_intx_disable);
  put(pci::status, 2, pci::status_capabilities_list, 0);
  put(pci::revision_id, 1, 0x01, 0);
  put(pci::class_code, 3, 0x020000, 0);  // network controller, Ethernet
  put(0x0c, 1, 0, 0xff);                 // cache line size
  put(pci::bar_offset(0), 4, pci::bar_type_64, ~std::uint32_t{KA_NIC_BAR0_SIZE - 1});
  put(pci::bar_offset(1), 4, 0, 0xffffffff);
  put(pci::subsystem_vendor_id, 2, KA_NIC_VENDOR_ID, 0);
  put(pci::subsystem_id, 2, KA_NIC_DEVICE_ID, 0);
  put(pci::capabilities_pointer, 1, cap_msix, 0);
  put(pci::interrupt_line, 1, 0, 0xff);  // interrupt pin 0: no INTx
  put(cap_msix + pci::cap_id_offset, 1, static_cast<std::uint8_t>(pci::cap_id::msix), 0);
  put(cap_msix + pci::cap_next_offset, 1, cap_pcie, 0);
  put(msix_control_reg, 2, hw::msix_cap::encode_table_size(static_cast<unsigned>(msix_.size())),
      hw::msix_cap::control_enable | hw::msix_cap::control_function_mask);
  put(cap_msix + hw::msix_cap::table, 4, hw::msix_cap::encode_location({0, KA_NIC_MSIX_TABLE_OFF}), 0);
  put(cap_msix + hw::msix_cap::pba, 4, hw::msix_cap::encode_location({0, KA_NIC_MSIX_PBA_OFF}), 0);
  put(cap_pcie + pci::cap_id_offset, 1, static_cast<std::uint8_t>(pci::cap_id::pcie), 0);
  put(cap_pcie + pci::cap_next_offset, 1, 0, 0);
  put(cap_pcie + 2, 2, 0x0002, 0);  // PCIe capability version 2, endpoint
  put(cap_pcie + pci::pcie_device_capabilities, 4, pci::pcie_devcap_flr, 0);
  put(pcie_devctl, 2, devctl_default, 0x7fff);  // bit 15 (initiate FLR) always reads 0

  ctrl_ = ring_base_ = ring_size_ = head_ = tail_ = 0;
  mod_pkts_ = mod_usec_ = payload_len_ = 0;
  std::fill(msix_.begin(), msix_.end(), msix_entry{});
  pba_ = 0;
  unsignalled_ = 0;
  at_reset_ = total_;
}

std::uint16_t nic::command() const noexcept {
  return static_cast<std::uint16_t>(config_[pci::command] | (config_[pci::command + 1] << 8));
}

std::uint16_t nic::msix_control() const noexcept {
  return static_cast<std::uint16_t>(config_[msix_control_reg] | (config_[msix_control_reg + 1] << 8));
}

std::uint32_t nic::config_read(std::uint16_t offset, unsigned size) {
  if ((size != 1 && size != 2 && size != 4) || offset % size != 0 || offset + size > config_.size())
    return static_cast<std::uint32_t>(all_ones(size == 1 || size == 2 ? size : 4));
  std::lock_guard lk{mu_};
  std::uint32_t v = 0;
  for (unsigned i = 0; i < size; ++i) v |= std::uint32_t{config_[offset + i]} << (8 * i);
  return v;
}

void nic::config_write(std::uint16_t offset, unsigned size, std::uint32_t value) {
  if ((size != 1 && size != 2 && size != 4) || offset % size != 0 || offset + size > config_.size()) return;
  bool flr = false;
  {
    std::unique_lock lk{mu_};
    wait_idle(lk);
    for (unsigned i = 0; i < size; ++i) {
      const auto b = static_cast<std::uint8_t>(value >> (8 * i));
      auto& c = config_[offset + i];
      c = static_cast<std::uint8_t>((c & ~wmask_[offset + i]) | (b & wmask_[offset + i]));
      if (offset + i == pcie_devctl + 1 && (b & (pci::pcie_devctl_initiate_flr >> 8)) != 0) flr = true;
    }
  }
  poke();
  if (flr) function_level_reset();
}

// ---- BAR0 -----------------------------------------------------------------

std::uint64_t nic::reg_read(std::uint64_t reg) const noexcept {
  switch (reg) {
    case KA_NIC_CTRL: return ctrl_;
    case KA_NIC_RX_RING_BASE: return ring_base_;
    case KA_NIC_RX_RING_SIZE: return ring_size_;
    case KA_NIC_RX_HEAD: return head_;
    case KA_NIC_RX_TAIL: return tail_;
    case KA_NIC_RATE_PPS: return rate_pps_;
    case KA_NIC_IRQ_MOD_PKTS: return mod_pkts_;
    case KA_NIC_IRQ_MOD_USEC: return mod_usec_;
    case KA_NIC_PAYLOAD_LEN: return payload_len_;
    case KA_NIC_STAT_PACKETS: return total_.packets - at_reset_.packets;
    case KA_NIC_STAT_DROPS: return total_.drops - at_reset_.drops;
    case KA_NIC_STAT_IRQS: return total_.irqs - at_reset_.irqs;
    case KA_NIC_STAT_DMA_ERR: return total_.dma_errors - at_reset_.dma_errors;
    case KA_NIC_NEXT_SEQ: return next_seq_;
    default: return 0;
  }
}

void nic::reg_write(std::uint64_t reg, std::uint64_t value) {
  switch (reg) {
    case KA_NIC_CTRL: ctrl_ = value & KA_NIC_CTRL_ENABLE; break;
    case KA_NIC_RX_RING_BASE:
      ring_base_ = value & ~std::uint64_t{0xf};
      head_ = 0;
      break;
    case KA_NIC_RX_RING_SIZE:
      ring_size_ = value & 0x1ffff;
      head_ = 0;
      break;
    case KA_NIC_RX_TAIL: tail_ = value & 0xffff; break;
    case KA_NIC_RATE_PPS: set_rate(value); break;
    case KA_NIC_IRQ_MOD_PKTS: mod_pkts_ = value & 0xffffffff; break;
    case KA_NIC_IRQ_MOD_USEC: mod_usec_ = value & 0xffffffff; break;
    case KA_NIC_PAYLOAD_LEN: payload_len_ = value & 0xffff; break;
    default: break;  // read-only or unimplemented
  }
}

void nic::set_rate(std::uint64_t pps) {
  if (pps == rate_pps_) return;
  rate_pps_ = pps;
  sched_start_ = clock::now();
  sched_k_ = 0;
}

std::uint64_t nic::mmio_read(unsigned bar, std::uint64_t offset, unsigned size) {
  if (bar != 0 || (size != 4 && size != 8) || offset % size != 0 || offset + size > KA_NIC_BAR0_SIZE)
    return all_ones(size == 8 ? 8 : 4);
  mmio_waiting_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lk{mu_};
  mmio_waiting_.fetch_sub(1, std::memory_order_relaxed);
  if ((command() & pci::command_memory_space) == 0) return all_ones(size);  // unsupported request
  const unsigned shift = static_cast<unsigned>(offset % 8) * 8;
  const std::uint64_t qword = offset & ~std::uint64_t{7};
  std::uint64_t v = 0;
  if (qword < KA_NIC_MSIX_TABLE_OFF) {
    v = reg_read(qword);
  } else if (qword < KA_NIC_MSIX_PBA_OFF) {
    const std::uint64_t e = (qword - KA_NIC_MSIX_TABLE_OFF) / 16;
    if (e < msix_.size()) {
      const auto& m = msix_[e];
      v = (qword % 16 == 0) ? m.address : (m.data | (std::uint64_t{m.control} << 32));
    }
  } else if (qword == KA_NIC_MSIX_PBA_OFF) {
    v = pba_;
  }
  return (v >> shift) & all_ones(size);
}

void nic::mmio_write(unsigned bar, std::uint64_t offset, unsigned size, std::uint64_t value) {
  if (bar != 0 || (size != 4 && size != 8) || offset % size != 0 || offset + size > KA_NIC_BAR0_SIZE) return;
  {
    mmio_waiting_.fetch_add(1, std::memory_order_relaxed);
    std::unique_lock lk{mu_};
    mmio_waiting_.fetch_sub(1, std::memory_order_relaxed);
    if ((command() & pci::command_memory_space) == 0) return;  // unsupported request: dropped
    const unsigned shift = static_cast<unsigned>(offset % 8) * 8;
    const std::uint64_t qword = offset & ~std::uint64_t{7};
    const std::uint64_t mask = all_ones(size) << shift;
    auto merge = [&](std::uint64_t old) { return (old & ~mask) | ((value << shift) & mask); };
    if (qword < KA_NIC_MSIX_TABLE_OFF) {
      if (qword != KA_NIC_RX_TAIL) wait_idle(lk);  // TAIL is the hot path; it never disables
      reg_write(qword, merge(reg_read(qword)));
    } else if (qword < KA_NIC_MSIX_PBA_OFF) {
      const std::uint64_t e = (qword - KA_NIC_MSIX_TABLE_OFF) / 16;
      if (e >= msix_.size()) return;
      wait_idle(lk);
      auto& m = msix_[e];
      if (qword % 16 == 0) {
        m.address = merge(m.address);
      } else {
        const std::uint64_t w = merge(m.data | (std::uint64_t{m.control} << 32));
        m.data = static_cast<std::uint32_t>(w);
        m.control = static_cast<std::uint32_t>(w >> 32) & 1u;
      }
    } else {
      return;  // PBA is read-only
    }
  }
  poke();
}

// ---- FLR --------------------------------------------------------------------

void nic::function_level_reset() {
  {
    std::unique_lock lk{mu_};
    wait_idle(lk);
    reset_locked();
    resets_.fetch_add(1);
  }
  poke();
  // PCIe: software may not touch the function for 100 ms after initiating FLR.
  if (flr_wait_.count() > 0) std::this_thread::sleep_for(flr_wait_);
}

nic_stats nic::stats() const {
  std::lock_guard lk{mu_};
  nic_stats s;
  s.packets = total_.packets;
  s.drops = total_.drops;
  s.irqs = total_.irqs;
  s.dma_errors = total_.dma_errors;
  s.irqs_masked = total_.irqs_masked;
  s.next_seq = next_seq_;
  s.resets = resets_.load();
  return s;
}

// ---- device thread ------------------------------------------------------------

void nic::poke() noexcept {
  {
    std::lock_guard lk{mu_};
    wake_ = true;
  }
  cv_.notify_one();
}

void nic::wait_idle(std::unique_lock<std::mutex>& lk) {
  ++writers_waiting_;
  idle_cv_.wait(lk, [this] { return !in_flight_; });
  --writers_waiting_;
  idle_cv_.notify_all();
}

bool nic::can_receive() const noexcept {
  const auto cmd = command();
  return (cmd & pci::command_memory_space) != 0 && (cmd & pci::command_bus_master) != 0 &&
         (msix_control() & hw::msix_cap::control_enable) != 0 && (ctrl_ & KA_NIC_CTRL_ENABLE) != 0 &&
         ring_size_valid(ring_size_) && payload_len_valid(payload_len_);
}

bool nic::can_signal() const noexcept {
  return (command() & pci::command_bus_master) != 0 && (msix_control() & hw::msix_cap::control_enable) != 0;
}

bool nic::vector_masked(unsigned v) const noexcept {
  return (msix_control() & hw::msix_cap::control_function_mask) != 0 || (msix_[v].control & 1u) != 0;
}

void nic::send(std::unique_lock<std::mutex>& lk, msi_message m) {
  ++total_.irqs;
  lk.unlock();
  unit_.msi(source_id(), m.address, m.data);
  lk.lock();
}

// Moderation fired: vector 0 goes out, or waits in the PBA while masked.
void nic::signal(std::unique_lock<std::mutex>& lk) {
  unsignalled_ = 0;
  if (vector_masked(0) || !can_signal()) {
    ++total_.irqs_masked;  // held; repeated signals coalesce into the one pending bit
    pba_ |= 1u;
    return;
  }
  send(lk, {msix_[0].address, msix_[0].data});
}

void nic::deliver_pending(std::unique_lock<std::mutex>& lk) {
  if ((pba_ & 1u) == 0 || vector_masked(0) || !can_signal()) return;
  pba_ &= ~std::uint64_t{1};
  send(lk, {msix_[0].address, msix_[0].data});
}

// One packet for a ready device: returns false when the ring is full.
bool nic::receive_one(std::unique_lock<std::mutex>& lk, std::uint64_t seq) {
  const std::uint64_t size = ring_size_;
  const std::uint64_t head = head_;
  if (head == (tail_ & (size - 1))) return false;
  const iova desc{ring_base_ + head * sizeof(ka_nic_rx_desc)};
  const auto plen = static_cast<std::uint32_t>(payload_len_);
  const std::uint16_t sid = source_id();

  in_flight_ = true;
  lk.unlock();
  std::array<std::byte, hdr_bytes + max_payload> pkt;
  bool ok = false;
  std::array<std::byte, sizeof(ka_nic_rx_desc)> raw;
  if (unit_.dma_read(sid, desc, raw)) {
    std::uint64_t buffer = 0;
    std::memcpy(&buffer, raw.data(), sizeof buffer);
    auto* payload = reinterpret_cast<std::uint8_t*>(pkt.data() + hdr_bytes);
    for (std::uint32_t i = 0; i < plen; ++i) payload[i] = ka_nic_payload_byte(seq, i);
    ka_nic_packet_hdr hdr{seq, plen, ka_nic_checksum(seq, payload, plen)};
    std::memcpy(pkt.data(), &hdr, sizeof hdr);
    const std::uint64_t wb = (hdr_bytes + plen) | (std::uint64_t{KA_NIC_DESC_DD} << 16);
    std::array<std::byte, 8> wb_raw;
    std::memcpy(wb_raw.data(), &wb, sizeof wb);
    ok = unit_.dma_write(sid, iova{buffer}, std::span{pkt}.first(hdr_bytes + plen)) &&
         unit_.dma_write(sid, desc + 8, wb_raw);
  }
  lk.lock();
  in_flight_ = false;
  idle_cv_.notify_all();

  if (!ok) {
    ++total_.dma_errors;  // lost; HEAD stays on the descriptor for the next packet
    return true;
  }
  ++total_.packets;
  head_ = (head + 1) & (size - 1);
  if (unsignalled_++ == 0) first_unsignalled_ = clock::now();
  if (unsignalled_ >= std::max<std::uint64_t>(mod_pkts_, 1)) signal(lk);
  return true;
}

void nic::generate_due(std::unique_lock<std::mutex>& lk, clock::time_point now) {
  const std::uint64_t rate = std::min(rate_pps_, max_rate_pps);
  if (now < sched_start_) return;
  const auto elapsed = static_cast<std::uint64_t>(std::chrono::nanoseconds{now - sched_start_}.count());
  // Packet k is due at sched_start_ + k / rate.
  const std::uint64_t due = elapsed / 1'000'000'000 * rate + (elapsed % 1'000'000'000) * rate / 1'000'000'000 + 1;
  std::uint64_t n = due > sched_k_ ? std::min(due - sched_k_, max_batch) : 0;
  const auto start = sched_start_;
  while (n > 0) {
    if (writers_waiting_ != 0) idle_cv_.wait(lk, [this] { return writers_waiting_ == 0; });
    if (mmio_waiting_.load(std::memory_order_relaxed) != 0) {
      // A driver is waiting for the lock (a TAIL doorbell, most often): let it
      // in between packets, or a catch-up batch starves it and the ring fills.
      lk.unlock();
      std::this_thread::yield();
      lk.lock();
    }
    if (stop_ || rate_pps_ == 0 || sched_start_ != start) return;  // rate rewritten: new schedule
    --n;
    const std::uint64_t seq = next_seq_++;
    ++sched_k_;
    if (!can_receive()) {
      // The wire does not stop: everything due while the function cannot DMA is lost.
      const std::uint64_t rest = n;
      next_seq_ += rest;
      sched_k_ += rest;
      total_.drops += rest + 1;
      break;
    }
    if (!receive_one(lk, seq)) ++total_.drops;
  }
  // Rebase the schedule every whole second so the arithmetic never overflows.
  if (rate != 0 && sched_k_ >= rate) {
    const std::uint64_t secs = sched_k_ / rate;
    sched_k_ -= secs * rate;
    sched_start_ += std::chrono::seconds{secs};
  }
}

void nic::run() {
  std::unique_lock lk{mu_};
  while (!stop_) {
    auto now = clock::now();
    if (rate_pps_ != 0) generate_due(lk, now);
    now = clock::now();
    if (unsignalled_ != 0 && now >= first_unsignalled_ + std::chrono::microseconds{mod_usec_} && mod_usec_ != 0)
      signal(lk);
    deliver_pending(lk);
    if (stop_) break;

    // Next wake-up: the next packet due, or the moderation timer; at least one idle step away.
    now = clock::now();
    std::optional<clock::time_point> deadline;
    if (rate_pps_ != 0) {
      const std::uint64_t rate = std::min(rate_pps_, max_rate_pps);
      const auto next_due =
          sched_start_ + std::chrono::nanoseconds{static_cast<std::int64_t>(sched_k_ * 1'000'000'000 / rate)};
      if (next_due <= now) continue;  // backlog: keep catching up
      deadline = next_due;
    }
    if (unsignalled_ != 0 && mod_usec_ != 0) {
      const auto t = first_unsignalled_ + std::chrono::microseconds{mod_usec_};
      deadline = deadline ? std::min(*deadline, t) : t;
    }
    if (wake_) {
      wake_ = false;
      continue;
    }
    auto woken = [this] { return stop_ || wake_; };
    if (deadline)
      cv_.wait_until(lk, std::max(*deadline, now + idle_step), woken);
    else
      cv_.wait(lk, woken);
    wake_ = false;
  }
}

}  // namespace keepalive::sim
