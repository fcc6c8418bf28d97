#include "harness.hpp"

#include <chrono>
#include <thread>

#include <fmt/format.h>

namespace keepalive::minivmm {
namespace {
void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds{ms}); }
}  // namespace

bool run_report::clean() const noexcept {
  return guest.state == MINIVMM_STATE_RUNNING && guest.lost == 0 && guest.gaps == 0 && guest.corrupted == 0 &&
         guest.reordered == 0 && guest.fault_count == 0 && nic.drops == 0 && nic.dma_errors == 0;
}

std::string run_report::describe() const {
  return fmt::format(
      "guest: state {} received {} lost {} gaps {} reordered {} corrupted {} interrupts {} (empty {}) batches {} "
      "faults {} | nic: packets {} drops {} irqs {} dma_errors {} | backlog {} drained {}",
      guest.state, guest.received, guest.lost, guest.gaps, guest.reordered, guest.corrupted, guest.interrupts,
      guest.empty_interrupts, guest.batches, guest.fault_count, nic.packets, nic.drops, nic.irqs, nic.dma_errors, backlog,
      drained);
}

status wait_guest_running(vmm& v, int timeout_ms) {
  for (int waited = 0;; waited += 5) {
    const auto c = v.counters();
    if (c.state == MINIVMM_STATE_RUNNING) return {};
    if (c.state == MINIVMM_STATE_FAULTED)
      return {errc::io, fmt::format("guest fault: vector {:#x} error {:#x} rip {:#x} cr2 {:#x}", c.fault_vector,
                                    c.fault_error, c.fault_rip, c.fault_cr2)};
    if (c.state == MINIVMM_STATE_BAD_BOOT_INFO) return {errc::invalid, "guest refused its boot info"};
    if (auto f = v.vcpu_failure()) return {errc::io, *f};
    if (waited >= timeout_ms) return {errc::again, fmt::format("guest not running after {} ms (state {})", timeout_ms, c.state)};
    sleep_ms(5);
  }
}

result<nic_counters> read_nic(vmm& v) {
  nic_counters n;
  const std::pair<std::uint64_t, std::uint64_t*> regs[] = {{KA_NIC_STAT_PACKETS, &n.packets},
                                                           {KA_NIC_STAT_DROPS, &n.drops},
                                                           {KA_NIC_STAT_IRQS, &n.irqs},
                                                           {KA_NIC_STAT_DMA_ERR, &n.dma_errors},
                                                           {KA_NIC_NEXT_SEQ, &n.next_seq}};
  for (auto [reg, out] : regs) {
    auto r = v.nic_reg(reg);
    if (!r) return r.err();
    *out = *r;
  }
  return n;
}

result<bool> drain(vmm& v, int timeout_ms) {
  if (auto st = v.set_rate(0); !st) return st.err();
  for (int waited = 0;; waited += 2) {
    auto n = read_nic(v);
    if (!n) return n.err();
    const auto c = v.counters();
    if (c.received >= n->packets) return true;
    if (waited >= timeout_ms || c.state != MINIVMM_STATE_RUNNING) return false;
    sleep_ms(2);
  }
}

result<run_report> report_now(vmm& v) {
  run_report r;
  auto n = read_nic(v);
  if (!n) return n.err();
  r.nic = *n;
  r.guest = v.counters();
  r.backlog = r.nic.packets > r.guest.received ? r.nic.packets - r.guest.received : 0;
  return r;
}

status new_gap_epoch(vmm& v, int timeout_ms) {
  const std::uint64_t want = v.counters().gap_epoch_seen + 1;
  v.bump_gap_epoch();
  for (int waited = 0; v.counters().gap_epoch_seen != want; waited += 1) {
    if (waited >= timeout_ms) return {errc::again, "guest did not take an interrupt to start a new gap epoch"};
    sleep_ms(1);
  }
  return {};
}

void measure_resume_gap(vmm& v, restart_timing& r) {
  // The guest's first NIC interrupt after the resume closes the gap it saw:
  // find it in the guest's interrupt log (the last MINIVMM_IRQ_LOG interrupts).
  const std::uint64_t first = r.guest_irqs_at_pause + 1;
  for (int waited_us = 0; waited_us < 2'000'000; waited_us += 50) {
    const auto c = v.counters();
    if (c.interrupts >= first) {
      r.guest_resumed = true;
      if (c.interrupts - first < MINIVMM_IRQ_LOG)
        r.guest_gap_tsc = c.irq_tsc_log[first % MINIVMM_IRQ_LOG] - r.guest_last_irq_tsc;
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds{50});
  }
}

result<restart_timing> restart(std::unique_ptr<vmm>& v, const connector& connect, const vmm_options& opt,
                               const std::string& name, const token& t, const std::function<void()>& while_paused) {
  auto next = vmm::prepare(connect(name), opt);  // (a) before the pause
  if (!next) return next.err();
  auto state = v->handover(t);
  if (!state) return state.err();
  // The state crosses as bytes, as it would through a pipe or across exec.
  auto bytes = encode_snapshot(*state);
  if (!bytes) return bytes.err();
  auto decoded = decode_snapshot(*bytes);
  if (!decoded) return decoded.err();
  restart_timing t_old = v->timing();
  if (while_paused) while_paused();
  // The old VMM released its device in handover; its VM teardown (the rest of
  // its process exit) runs after the new one resumed, as it would in parallel.
  auto st = (*next)->take_over(std::move(*decoded));
  v.reset();
  if (!st) return st.err();
  v = std::move(*next);
  restart_timing r = v->timing();
  r.stop_ns = t_old.stop_ns;
  r.enter_ns = t_old.enter_ns;
  r.save_ns = t_old.save_ns;
  r.get_state_ns = t_old.get_state_ns;
  r.release_ns = t_old.release_ns;
  measure_resume_gap(*v, r);
  return r;
}

}  // namespace keepalive::minivmm
