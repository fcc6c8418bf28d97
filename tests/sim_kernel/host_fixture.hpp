// One simulated host per test: platform, kernel, a guest and its layout.
#pragma once

#include <doctest/doctest.h>
#include <linux/vfio_keepalive.h>

#include <chrono>
#include <memory>
#include <optional>
#include <thread>

#include <keepalive/hw/irte.hpp>
#include <keepalive/hw/posted_intr.hpp>

#include "kernel.hpp"
#include "platform.hpp"
#include "sim_host.hpp"

namespace keepalive::sim::testing {

inline const bdf nic0{0, 0, 4, 0};

struct host_fixture {
  explicit host_fixture(kernel_mode mode = kernel_mode::keepalive, bool posted = true) {
    platform_config pc;
    pc.phys_bytes = 96ull << 20;
    pc.posted_interrupts = posted;
    plat = std::move(*platform::create(pc));
    kcfg.mode = mode;
    kcfg.map.kernel_end = 64ull << 20;
    k = std::move(*kernel::boot(*plat, kcfg));
    ram = hpa{kcfg.map.guest_start()};
    g = std::make_unique<guest>(*plat, ram, layout, nic0);
  }
  ~host_fixture() {
    if (g) g->stop();
    // Stop the wire before the kernel goes away.
    if (auto* n = plat->find_nic(nic0)) n->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  }
  void kexec() {
    auto nk = sim::kexec(std::move(k));
    REQUIRE(nk);
    k = std::move(*nk);
  }
  nic_stats nic() { return plat->find_nic(nic0)->stats(); }
  // The posted-interrupt descriptor at `a` in the platform's memory, live.
  const hw::posted_intr_desc& pid_at(hpa a) const {
    return *reinterpret_cast<const hw::posted_intr_desc*>(plat->memory().base() + a.value());
  }
  // Stop traffic, let the last moderated interrupt arrive, and let the guest
  // consume everything: afterwards guest.received must equal packets written.
  void drain_guest() {
    plat->find_nic(nic0)->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
    for (int i = 0; i < 200 && g->received.load() < nic().packets; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds{2});
  }
  static void run_for(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds{ms}); }
  // Wait (bounded) until `pred` holds: the device threads run when the
  // scheduler lets them, so tests wait for events, not for durations.
  template <typename Pred>
  static bool eventually(Pred pred, int max_ms = 2000) {
    for (int i = 0; i < max_ms / 2; ++i) {
      if (pred()) return true;
      run_for(2);
    }
    return pred();
  }
  // Until the kept-alive device has an interrupt pending (posted or latched
  // while nobody owned it).
  bool wait_pending(bdf dev) {
    auto ctl = k->spawn("ctl");
    auto fd = ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
    if (!fd) return false;
    return eventually([&] {
      auto rows = abi::list_devices(*ctl, *fd);
      if (!rows) return false;
      for (const auto& r : *rows)
        if (r.device == dev && r.nr_pending > 0) return true;
      return false;
    });
  }

  // A VMM that streamed for a while, then paused its guest and entered
  // keepalive with `t`: the moment before it exits.
  std::unique_ptr<vmm> entered_vmm(const token& t, std::uint64_t rate_pps = 100000) {
    auto a = std::make_unique<vmm>(*k, "vmm-a", *g, layout, ram, nic0);
    REQUIRE(a->cold_start(rate_pps));
    g->start();
    run_for(30);
    g->pause();
    REQUIRE(a->enter_keepalive(t));
    return a;
  }

  // The one posted IRTE in the interrupt-remapping table (the NIC's vector 0
  // in these tests); nullopt if there is none or more than one.
  std::optional<hw::irte> posted_irte() const {
    const std::uint64_t irta = plat->vtd().irta();
    const std::uint64_t base = irta & ~std::uint64_t{0xfff};
    const std::uint64_t entries = std::uint64_t{1} << ((irta & 0xf) + 1);
    std::optional<hw::irte> found;
    for (std::uint64_t i = 0; i < entries; ++i) {
      const std::uint64_t* w = plat->memory().word_ptr(hpa{base + i * 16});
      const auto e = hw::irte::from_words(w[0], w[1]);
      if (!e.present() || !e.is_posted()) continue;
      if (found) return std::nullopt;
      found = e;
    }
    return found;
  }

  std::unique_ptr<platform> plat;
  kernel_config kcfg;
  std::unique_ptr<kernel> k;
  guest_layout layout;
  hpa ram;
  std::unique_ptr<guest> g;
};

}  // namespace keepalive::sim::testing
