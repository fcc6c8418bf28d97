// The test harness around a VMM: the link partner that sets the wire rate,
// waits for the guest, drains the ring, restarts the VMM and judges the run
// from the guest's own counters and the NIC's statistics.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "vmm.hpp"

namespace keepalive::minivmm {

struct nic_counters {
  std::uint64_t packets = 0, drops = 0, irqs = 0, dma_errors = 0, next_seq = 0;
};

struct run_report {
  minivmm_counters guest{};
  nic_counters nic;
  std::uint64_t backlog = 0;  // packets written to the ring, not yet consumed, when the window closed
  bool drained = false;       // after the wire stopped, the guest consumed everything
  [[nodiscard]] bool clean() const noexcept;  // nothing lost, corrupted, dropped or faulted
  [[nodiscard]] std::string describe() const;
};

// Boots nothing: waits until the guest reports RUNNING (or faults / times out).
[[nodiscard]] status wait_guest_running(vmm& v, int timeout_ms);
[[nodiscard]] result<nic_counters> read_nic(vmm& v);
// Stops the wire and waits until the guest consumed every packet written.
[[nodiscard]] result<bool> drain(vmm& v, int timeout_ms);
[[nodiscard]] result<run_report> report_now(vmm& v);
// Starts a new largest-gap measurement and waits until the guest took it up
// (at its next interrupt), so the next gap is measured in the new epoch.
[[nodiscard]] status new_gap_epoch(vmm& v, int timeout_ms);

// One restart: prepare the successor from `connect`, hand over, let the old
// VMM exit, take over. `v` is replaced by the successor. Returns both sides' times.
using connector = std::function<std::unique_ptr<host_link>(const std::string& name)>;
// `while_paused` runs when the old VMM has handed over and the new one has not
// taken over: the device is OWNERLESS, nobody runs the guest.
[[nodiscard]] result<restart_timing> restart(std::unique_ptr<vmm>& v, const connector& connect, const vmm_options& opt,
                                             const std::string& name, const token& t,
                                             const std::function<void()>& while_paused = {});

// After a take-over: waits for the guest's first NIC interrupt and stores the
// gap it saw (timing.guest_gap_tsc; stays 0 when no interrupt came in 2 s).
void measure_resume_gap(vmm& v, restart_timing& timing);

[[nodiscard]] inline double tsc_to_us(std::uint64_t cycles, std::uint32_t khz) noexcept {
  return khz == 0 ? 0.0 : static_cast<double>(cycles) * 1000.0 / static_cast<double>(khz);
}

}  // namespace keepalive::minivmm
