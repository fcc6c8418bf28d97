// A simulated host with N streaming NICs and one guest stand-in per NIC (own
// ring and buffers in one 16 MiB guest RAM), and a VMM process that drives
// them through keepalive::session + sim_wiring.
#pragma once

#include <doctest/doctest.h>
#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernel.hpp"
#include "keepalive/abi/ops.hpp"
#include "keepalive/session.hpp"
#include "keepalive/sim_wiring.hpp"
#include "platform.hpp"
#include "sim_host.hpp"

namespace keepalive::session_test {

using namespace keepalive::sim;
using namespace keepalive::sim::testing;

inline const token tok = *token::parse("5b1c7a6e-2f0d-4e11-9a3c-0d5e6f708192");
inline const token wrong_tok = *token::parse("00000000-0000-4000-8000-000000000001");
// Three NICs on a loaded 2-core machine under ASan: a rate the device
// threads keep up with, and a ring of 8192 that lasts 1.6 s with the guest
// paused (threads may not run for tens of milliseconds).
inline constexpr std::uint64_t rate_pps = 5000;
inline constexpr std::uint32_t ring_entries = 8192;

inline bdf nic_bdf(unsigned i) { return bdf{0, 0, static_cast<std::uint8_t>(4 + i), 0}; }
inline std::string why(const status& st) { return st ? std::string{"ok"} : st.err().message(); }
template <typename T>
std::string why(const result<T>& r) {
  return r ? std::string{"ok"} : r.err().message();
}

struct multi_host {
  explicit multi_host(unsigned nics = 3, bool posted = true) {
    platform_config pc;
    pc.phys_bytes = 96ull << 20;
    pc.nics = nics;
    pc.posted_interrupts = posted;
    plat = std::move(*platform::create(pc));
    kcfg.map.kernel_end = 64ull << 20;
    k = std::move(*kernel::boot(*plat, kcfg));
    ram = hpa{kcfg.map.guest_start()};
    for (unsigned i = 0; i < nics; ++i) {
      guest_layout l;
      l.ring_entries = ring_entries;
      l.ring_gpa = 0x20000ull * (i + 1);        // 128 KiB rings
      l.buffers_gpa = 0x200000ull * (i + 1);    // 2 MiB of buffers each
      layouts.push_back(l);
      guests.push_back(std::make_unique<guest>(*plat, ram, l, nic_bdf(i)));
    }
  }
  ~multi_host() {
    for (auto& g : guests) g->stop();
    for (unsigned i = 0; i < guests.size(); ++i)
      if (auto* n = plat->find_nic(nic_bdf(i))) n->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  }
  [[nodiscard]] unsigned nics() const { return static_cast<unsigned>(guests.size()); }
  nic_stats stats(unsigned i) { return plat->find_nic(nic_bdf(i))->stats(); }

  // The VM's description as a VMM gives it to the session.
  [[nodiscard]] std::vector<device_spec> specs() const {
    std::vector<device_spec> out;
    for (unsigned i = 0; i < nics(); ++i)
      out.push_back({nic_bdf(i), nic_bdf(i).devfn(),
                     {{msix_index{0}, vector{static_cast<std::uint8_t>(0x40 + i)}, i % 2}}});
    return out;
  }
  // Guest RAM as two 8 MiB regions of one shared file.
  [[nodiscard]] std::vector<ram_region> regions() const {
    const std::uint64_t half = 8ull << 20;
    return {{gpa{0}, iova{0}, half, ram.value(), "sim-phys", ram.value()},
            {gpa{half}, iova{half}, half, ram.value() + half, "sim-phys", ram.value() + half}};
  }
  vmm_state vm_state() const {
    vmm_state st;
    st.nr_vcpus = 2;
    st.vcpu_state = {{0, vcpu_state_tag::regs, std::vector<std::byte>(144, std::byte{0x11})},
                     {1, vcpu_state_tag::regs, std::vector<std::byte>(144, std::byte{0x22})},
                     {0, vcpu_state_tag::lapic, std::vector<std::byte>(1024, std::byte{0x33})}};
    st.extra = {std::byte{'q'}, std::byte{'e'}, std::byte{'m'}, std::byte{'u'}};
    return st;
  }

  void start_guests() {
    for (auto& g : guests) g->start();
  }
  void pause_guests() {
    for (auto& g : guests) g->pause();
  }
  void resume_guests() {
    for (auto& g : guests) g->resume();
  }
  // Stop the wire and let every guest consume what was written.
  void drain() {
    for (unsigned i = 0; i < nics(); ++i) plat->find_nic(nic_bdf(i))->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
    for (unsigned i = 0; i < nics(); ++i) (void)eventually([&] { return guests[i]->received.load() >= stats(i).packets; });
  }
  // Every packet written reached its guest intact, and nothing faulted.
  void check_no_loss(std::uint64_t resets_per_nic = 1) {
    for (unsigned i = 0; i < nics(); ++i) {
      CAPTURE(i);
      const auto s = stats(i);
      CHECK(s.packets > 0);
      CHECK(s.resets == resets_per_nic);
      CHECK(s.drops == 0);
      CHECK(s.dma_errors == 0);
      CHECK(guests[i]->received == s.packets);
      CHECK(guests[i]->lost_seqs == 0);
      CHECK(guests[i]->corrupted == 0);
    }
    CHECK(plat->vtd().counters().dma_faults == 0);
    CHECK(plat->vtd().counters().ir_faults == 0);
    CHECK(plat->vtd().counters().irq_no_cpu == 0);
    CHECK(k->stats().spurious == 0);
  }
  static void run_for(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds{ms}); }
  // Waits for conditions instead of guessing durations: threads of a loaded
  // machine may not run for tens of milliseconds.
  template <typename F>
  static bool eventually(F f, int timeout_ms = 5000) {
    for (int t = 0; t < timeout_ms; ++t) {
      if (f()) return true;
      run_for(1);
    }
    return f();
  }
  // Every guest has received `more` packets beyond what it had.
  void wait_received(std::uint64_t more = 200) {
    std::vector<std::uint64_t> base;
    for (auto& g : guests) base.push_back(g->received.load());
    for (unsigned i = 0; i < nics(); ++i) {
      CAPTURE(i);
      REQUIRE(eventually([&] { return guests[i]->received.load() >= base[i] + more; }));
    }
  }

  std::unique_ptr<platform> plat;
  kernel_config kcfg;
  std::unique_ptr<kernel> k;
  hpa ram;
  std::vector<guest_layout> layouts;
  std::vector<std::unique_ptr<guest>> guests;
};

// A VMM process: its session and its KVM side.
struct vmm_proc {
  vmm_proc(multi_host& h, std::string name) : host{h}, proc{h.k->spawn(std::move(name))}, s{*proc}, w{*proc} {
    for (unsigned i = 0; i < h.nics(); ++i) w.set_eventfd(i, msix_index{0}, h.guests[i]->irq_fd());
  }
  // Describe the VM to the session (idle phase).
  void describe() {
    for (auto& d : host.specs()) REQUIRE(s.add_device(d));
    for (auto& r : host.regions()) REQUIRE(s.add_ram(r));
  }
  // What the VMM and the guest driver do after a cold open: memory space and
  // bus master on, interrupt moderation, the guest's ring, traffic.
  status program(unsigned i) {
    const std::uint64_t config = std::uint64_t{VFIO_PCI_CONFIG_REGION_INDEX} << 40;
    const std::uint64_t bar0 = std::uint64_t{VFIO_PCI_BAR0_REGION_INDEX} << 40;
    const int fd = s.device_fd(i);
    std::uint16_t cmd = 0x6;
    if (auto r = proc->pwrite(fd, std::as_bytes(std::span{&cmd, 1}), config + 4); !r) return r.err();
    for (auto [reg, v] : {std::pair{KA_NIC_IRQ_MOD_PKTS, std::uint64_t{16}}, std::pair{KA_NIC_IRQ_MOD_USEC, std::uint64_t{200}}})
      if (auto r = proc->pwrite(fd, std::as_bytes(std::span{&v, 1}), bar0 + reg); !r) return r.err();
    host.guests[i]->init_ring();
    std::uint64_t rate = rate_pps;
    if (auto r = proc->pwrite(fd, std::as_bytes(std::span{&rate, 1}), bar0 + KA_NIC_RATE_PPS); !r) return r.err();
    return {};
  }
  status cold_start() {
    describe();
    if (auto st = s.open(w); !st) return st;
    for (unsigned i = 0; i < host.nics(); ++i)
      if (auto st = program(i); !st) return st;
    return {};
  }
  abi::device_state state_of(unsigned i) { return abi::keepalive_status(*proc, s.device_fd(i))->state; }

  multi_host& host;
  std::shared_ptr<process> proc;
  session s;
  sim_wiring w;
};

// The operator's view (control node).
struct control {
  explicit control(kernel& k) : proc{k.spawn("keepalivectl")} {
    auto r = proc->open(VFIO_KEEPALIVE_CTL_PATH, 0);
    REQUIRE(r);
    fd = *r;
  }
  std::vector<abi::device_entry> list() { return *abi::list_devices(*proc, fd); }
  // Every device has an interrupt pending in its preserved descriptor.
  void wait_all_pending(unsigned nics) {
    REQUIRE(multi_host::eventually([&] {
      auto rows = list();
      if (rows.size() != nics) return false;
      for (const auto& r : rows)
        if (r.nr_pending == 0) return false;
      return true;
    }));
  }
  // Every NIC OWNERLESS with its one vector preserved.
  void check_all_ownerless(unsigned nics) {
    auto rows = list();
    REQUIRE(rows.size() == nics);
    for (unsigned i = 0; i < nics; ++i) {
      CAPTURE(i);
      CHECK(rows[i].device == nic_bdf(i));
      CHECK(rows[i].state == abi::device_state::ownerless);
      CHECK(rows[i].nr_vectors == 1);
    }
  }
  std::shared_ptr<process> proc;
  int fd = -1;
};

}  // namespace keepalive::session_test
