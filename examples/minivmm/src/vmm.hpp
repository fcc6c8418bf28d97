// The mini-VMM: one vCPU running the freestanding guest, one passthrough NIC
// whose BAR0 the guest drives through MMIO exits and whose MSI-X vector is
// posted (sim) and injected (real KVM irqfd) as guest vector 0x40.
//
// The device side is the library's: a keepalive::session (VFIO flow, keepalive,
// reclaim, all-or-nothing) with keepalive::sim_wiring as the KVM side, and the
// state crosses as a keepalive::snapshot (handover.hpp).
//
// Restart protocol (two VMM objects, or two processes over the daemon), the
// session's close-first order (include/keepalive/session.hpp, ORDER):
//   new = vmm::prepare(...)        VM, RAM slot, vCPU, MSI route, irqfd: while the old one runs
//   snap = old->handover(token)    pause vCPUs; session freeze(token) + hand_over (devices
//                                  OWNERLESS); KVM_GET_*; add_vmm_state; on failure call_off
//   write_snapshot / read_snapshot through a pipe, a file or across exec
//   old.reset()                    the old process exits (its host_link closes every fd)
//   new->take_over(snap)           restore vCPUs, session reclaim(snap), resume
// Guest RAM is never copied: both map the same slice of the physical-memory file.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "guest/shared.h"
#include "guest_setup.hpp"
#include "handover.hpp"
#include "host_link.hpp"
#include "keepalive/session.hpp"
#include "keepalive/sim_wiring.hpp"
#include "keepalive/snapshot.hpp"
#include "kvm.hpp"
#include "passthrough.hpp"

namespace keepalive::minivmm {

struct vmm_options {
  guest_config guest;
  bdf nic{0, 0, 4, 0};
  std::uint64_t ram_slice = 0;  // offset of this VM's RAM inside the host's guest area
  // RAM above 4 GiB (GPA/IOVA high_ram_gpa..), right after the low RAM in the
  // physical-memory file; the guest does not touch it (it exists, is mapped
  // in KVM and in the IOMMU: what a large guest costs a restart).
  std::uint64_t high_ram_bytes = 0;
  vector_route route;
  bool echo_guest_console = true;
};

struct exit_stats {
  std::uint64_t runs = 0, mmio = 0, mmio_bar0 = 0, mmio_other = 0, io = 0, interrupted = 0;
};

// Times of one restart (old side: handover; new side: take_over), in ns.
struct restart_timing {
  std::uint64_t prepare_ns = 0;  // new VMM: VM + slot + vCPU (before the pause)
  std::uint64_t stop_ns = 0;     // pause request -> vCPU out of KVM_RUN
  std::uint64_t enter_ns = 0;    // keepalive enter of every device
  std::uint64_t save_ns = 0;     // everything after the enter (close, KVM_GET)
  std::uint64_t flush_ns = 0;    //   KVM_IRQFD deassign (fd hand-over only: the device keeps signalling)
  std::uint64_t release_ns = 0;  //   closing the device fds (the kernel preserves the device)
  std::uint64_t get_state_ns = 0;  // KVM_GET_* of vCPU and irqchip, vCPU thread joined
  std::uint64_t restore_ns = 0;  // KVM_SET_* in the new VM
  std::uint64_t reclaim_ns = 0;  // open with token, map, SET_IRQS, bypass, leave
  std::uint64_t repoint_ns = 0;  // fd hand-over: VFIO_IOMMU_UNMAP/MAP_DMA with FLAG_VADDR
  std::uint64_t rewire_ns = 0;   // fd hand-over: SET_IRQS + posting into the new VM + KVM_IRQFD
  std::uint64_t start_ns = 0;    // new vCPU thread started
  std::uint64_t pause_ns = 0;    // pause request -> new vCPU running
  // Guest view: its last NIC interrupt before the pause, and the gap to the
  // first one after the resume (guest TSC cycles; 0 until measured).
  std::uint64_t guest_irqs_at_pause = 0, guest_last_irq_tsc = 0, guest_gap_tsc = 0;
  // The guest took an interrupt after the resume (guest_gap_tsc is 0 when the
  // gap could not be measured: the guest's log was overrun before it was read).
  bool guest_resumed = false;
};

// The open files a restart can carry to the next VMM instead of re-opening
// them (exec inheritance or SCM_RIGHTS, the QEMU CPR way): the host connection
// whose process holds the VFIO fds, the device, and the eventfd it signals.
// In-process hosts only (inproc_host): a sim process stands for the fd table.
struct carried_fds {
  std::unique_ptr<host_link> host;
  std::unique_ptr<sim_wiring> wiring;  // the old VM's descriptors (the floor keeps them)
  std::unique_ptr<session> devices;
  unique_fd irq_eventfd;
};

class vmm {
 public:
  // Everything that needs neither the device nor the guest's state.
  static result<std::unique_ptr<vmm>> prepare(std::unique_ptr<host_link> host, const vmm_options& opt);
  ~vmm();  // stop the vCPU and exit the process (host_link::exit)
  vmm(const vmm&) = delete;
  vmm& operator=(const vmm&) = delete;

  // Cold start: load the guest, open + enable the device, connect its vector, run.
  [[nodiscard]] status boot(std::span<const std::byte> image);
  // Old side of a restart. On error the VMM keeps running the guest.
  [[nodiscard]] result<snapshot> handover(const token& t);
  // New side of a restart (after the old VMM exited).
  [[nodiscard]] status take_over(snapshot snap);
  // Old side of a restart without keepalive: pause, save vCPU + irqchip, stop
  // the vCPU thread. The device is untouched (it streams on). flush_irqfd
  // deassigns the irqfd first: the device still signals the eventfd, and a
  // signal must not land in the LAPIC of this VM once its state is saved.
  [[nodiscard]] result<vm_state> save_for_restart(bool flush_irqfd);
  // After save_for_restart: gives the open files to the successor; this VMM
  // then exits without closing them.
  [[nodiscard]] carried_fds release_fds();
  // New side with carried files: KVM_SET_*, adopt the files and, with rewire
  // (fd hand-over), re-point every DMA mapping to this process's RAM
  // (FLAG_VADDR), move the vector's posting to this VM and assign this VM's
  // irqfd on the carried eventfd (a signal pending on it is injected then).
  // Without rewire (the floor) the device is not touched at all.
  [[nodiscard]] status take_over_carried(const vm_state& s, carried_fds fds, bool rewire);
  // Stops the vCPU for good (cold restart: the old VMM exits without handing anything over).
  void halt() { stop_vcpu(); }

  // After its owner died (no state to restore): reclaim the device with the
  // token, quiesce its receive path (CTRL, not a reset), boot the guest again
  // on the same RAM; its driver re-initialises the ring.
  [[nodiscard]] status reboot_reclaim(std::span<const std::byte> image, const token& t);

  // The talk's QMP set-keepalive: the device is KEPT_ALIVE while this VMM owns
  // it, so its death or exit leaves it OWNERLESS (never reset). handover()
  // then uses this token.
  [[nodiscard]] status arm_keepalive(const token& t);
  [[nodiscard]] status disarm_keepalive();
  [[nodiscard]] std::optional<token> armed_token() const;
  [[nodiscard]] result<abi::device_status> device_status();
  [[nodiscard]] bool has_device() const noexcept { return nic_ != nullptr; }

  // The NIC through this VMM's device fd (the harness is the link partner).
  [[nodiscard]] status set_rate(std::uint64_t pps);
  [[nodiscard]] result<std::uint64_t> nic_reg(std::uint64_t offset);
  // PCI command register of the device (Bus Master is bit 2).
  [[nodiscard]] result<std::uint16_t> pci_command();

  // The guest's counters page (read while the guest runs: each word atomic).
  [[nodiscard]] minivmm_counters counters() const;
  // Restart the guest's largest-interrupt-gap measurement.
  void bump_gap_epoch();
  [[nodiscard]] std::uint32_t tsc_khz() const noexcept { return tsc_khz_; }
  [[nodiscard]] std::uint64_t ram_bytes() const noexcept { return opt_.guest.ram_bytes + opt_.high_ram_bytes; }
  [[nodiscard]] exit_stats exits() const;
  [[nodiscard]] const restart_timing& timing() const noexcept { return timing_; }
  // Set when the vCPU loop stopped on its own (shutdown, internal error).
  [[nodiscard]] std::optional<std::string> vcpu_failure() const;
  [[nodiscard]] std::string console() const;

 private:
  vmm(std::unique_ptr<host_link> host, const vmm_options& opt) : host_{std::move(host)}, opt_{opt} {}
  status start_vcpu();
  // The saved vCPU and irqchip plus what the next VMM must match (RAM, TSC, route).
  void fill_state(vm_state& s, vcpu_state vcpu, const irqchip_state& chip) const;
  // Guest RAM as the session maps it (low RAM at GPA 0, high RAM at 4 GiB).
  [[nodiscard]] std::vector<ram_region> ram_regions() const;
  [[nodiscard]] std::unique_ptr<sim_wiring> make_wiring(int eventfd) const;
  // A fresh session reclaims `snap` into this VM (open with the token, map,
  // connect the vector to this VM, leave keepalive).
  status reclaim(const snapshot& snap);
  void attach_nic();
  void pause_vcpu();
  void resume_vcpu();
  void stop_vcpu();
  void vcpu_loop();
  bool handle_exit(kvm_run& run);  // false: the vCPU cannot continue
  void handle_mmio(kvm_run& run);
  void handle_io(kvm_run& run);
  void fail(std::string why);

  std::unique_ptr<host_link> host_;
  vmm_options opt_;
  std::unique_ptr<kvm_vm> vm_;
  std::unique_ptr<kvm_vcpu> vcpu_;
  std::byte* ram_ = nullptr;
  unique_fd irq_eventfd_;
  std::uint32_t tsc_khz_ = 0;
  // Destroyed in reverse: the device fds (session) close before the VM's
  // descriptors (wiring), so a kept-alive device never posts into a freed one.
  std::unique_ptr<sim_wiring> wiring_;
  std::unique_ptr<session> session_;
  std::unique_ptr<passthrough> nic_;  // over session_'s fds while it runs
  std::optional<token> armed_;

  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool pause_req_ = false, paused_ = false, stop_ = false, running_ = false;
  std::optional<std::string> failure_;
  std::string console_;
  struct {
    std::atomic<std::uint64_t> runs{0}, mmio{0}, mmio_bar0{0}, mmio_other{0}, io{0}, interrupted{0};
  } exits_;
  restart_timing timing_;
};

inline constexpr std::uint64_t high_ram_gpa = 4ull << 30;

// CLOCK_MONOTONIC in ns.
[[nodiscard]] std::uint64_t monotonic_ns() noexcept;

}  // namespace keepalive::minivmm
