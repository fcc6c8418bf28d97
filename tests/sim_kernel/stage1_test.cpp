// Stage 1 against the oracles: the device streams while its VMM restarts.
#include <linux/vfio_keepalive.h>

#include <keepalive/hw/posted_intr.hpp>

#include "host_fixture.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::testing;

namespace {
const token tok = *token::parse("5b1c7a6e-2f0d-4e11-9a3c-0d5e6f708192");
}

TEST_CASE("a VMM streams: every packet verified, no faults") {
  host_fixture h;
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  REQUIRE(a.cold_start(100000));
  h.g->start();
  h.run_for(200);
  h.drain_guest();
  CHECK(h.nic().packets > 10000);
  CHECK(h.g->received.load() > 10000);
  CHECK(h.g->received == h.nic().packets);
  CHECK(h.g->corrupted == 0);
  CHECK(h.g->lost_seqs == 0);
  CHECK(h.nic().drops == 0);
  CHECK(h.plat->vtd().counters().dma_faults == 0);
  CHECK(h.plat->vtd().counters().ir_faults == 0);
  CHECK(h.plat->vtd().counters().irq_posted > 0);
  CHECK(h.k->stats().irqfd_signals > 0);
  CHECK(h.k->stats().spurious == 0);
}

TEST_CASE("stage 1: VMM exits in keepalive, a new VMM reclaims with the token, nothing lost") {
  host_fixture h;
  auto a = std::make_unique<vmm>(*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0);
  REQUIRE(a->cold_start(100000));
  h.g->start();
  h.run_for(50);
  const auto resets_before = h.nic().resets;

  h.g->pause();  // freeze: vCPUs stopped
  auto e = a->enter_keepalive(tok);
  REQUIRE(e);
  CHECK(e->mode == abi::irq_mode::posted);
  CHECK(e->nr_vectors == 1);
  a->exit();  // the process is gone (exit or SIGKILL: same path)
  a.reset();
  // The device keeps streaming into guest RAM; its interrupt accumulates in PIR.
  REQUIRE(h.wait_pending(nic0));

  vmm b{*h.k, "vmm-b", *h.g, h.layout, h.ram, nic0};
  const auto wrong = *token::parse("00000000-0000-4000-8000-000000000001");
  CHECK(b.reclaim(wrong).code() == errc::access_denied);
  b.exit();
  vmm c{*h.k, "vmm-c", *h.g, h.layout, h.ram, nic0};
  REQUIRE(c.reclaim(tok));
  h.g->resume();
  h.run_for(50);
  h.drain_guest();

  CHECK(h.nic().resets == resets_before);
  CHECK(h.nic().drops == 0);
  CHECK(h.nic().dma_errors == 0);
  CHECK(h.g->received == h.nic().packets);
  CHECK(h.g->lost_seqs == 0);
  CHECK(h.g->corrupted == 0);
  CHECK(h.plat->vtd().counters().dma_faults == 0);
  CHECK(h.plat->vtd().counters().ir_faults == 0);
  CHECK(h.plat->vtd().counters().irq_no_cpu == 0);
  CHECK(h.k->stats().preserved_drained == 1);  // the interrupt raised in the gap was delivered
  CHECK(h.k->stats().spurious == 0);
  CHECK(h.k->stats().device_resets == 1);  // only the first open (vfio-pci resets on open)
}

TEST_CASE("baseline kernel: the same restart resets the device and loses packets (the oracles see it)") {
  host_fixture h{kernel_mode::baseline};
  auto a = std::make_unique<vmm>(*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0);
  REQUIRE(a->cold_start(100000));
  h.g->start();
  h.run_for(50);
  h.g->pause();
  CHECK(a->enter_keepalive(tok).code() == errc::not_tty);  // no keepalive in this kernel
  a->exit();
  a.reset();
  h.run_for(20);
  vmm b{*h.k, "vmm-b", *h.g, h.layout, h.ram, nic0};
  REQUIRE(b.cold_start(100000));  // the guest driver must re-initialise the device
  h.g->resume();
  h.run_for(50);
  h.drain_guest();
  CHECK(h.k->stats().device_resets >= 2);
  CHECK(h.nic().resets >= 2);
  CHECK(h.g->lost_seqs > 0);  // packets on the wire while the device was reset/disabled
}

TEST_CASE("keepalive refusals: double enter, leave with a wrong token, reclaim of a running device") {
  host_fixture h;
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  REQUIRE(a.cold_start(0));
  CHECK(abi::keepalive_status(a.sys(), a.device_fd())->state == abi::device_state::running);
  REQUIRE(a.enter_keepalive(tok));
  CHECK(a.enter_keepalive(tok).code() == errc::busy);
  CHECK(a.leave_keepalive(*token::parse("00000000-0000-4000-8000-000000000001")).code() == errc::access_denied);
  CHECK(abi::keepalive_status(a.sys(), a.device_fd())->state == abi::device_state::kept_alive);
  CHECK(a.leave_keepalive(tok));
  CHECK(a.leave_keepalive(tok).code() == errc::busy);
  CHECK(abi::keepalive_enter(a.sys(), a.device_fd(), token{}).code() == errc::invalid);  // nil token
  a.exit();
  vmm b{*h.k, "vmm-b", *h.g, h.layout, h.ram, nic0};
  CHECK(b.reclaim(tok).code() == errc::not_found);  // not in keepalive
}

TEST_CASE("no posted interrupts: enter needs ALLOW_MASKING, then the PBA keeps the interrupt") {
  host_fixture h{kernel_mode::keepalive, false};
  auto a = std::make_unique<vmm>(*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0);
  // The VMM cannot post: the vector stays remapped to the eventfd.
  REQUIRE(a->cold_start(50000));
  h.g->start();
  h.run_for(30);
  h.g->pause();
  CHECK(abi::keepalive_enter(a->sys(), a->device_fd(), tok).code() == errc::not_supported);
  auto e = abi::keepalive_enter(a->sys(), a->device_fd(), tok, {.allow_masking = true});
  REQUIRE(e);
  CHECK(e->mode == abi::irq_mode::masked);
  a->exit();
  a.reset();
  REQUIRE(h.wait_pending(nic0));
  CHECK(host_fixture::eventually([&] { return h.nic().irqs_masked > 0; }));
  vmm b{*h.k, "vmm-b", *h.g, h.layout, h.ram, nic0};
  REQUIRE(b.reclaim(tok));
  h.g->resume();
  h.run_for(30);
  h.drain_guest();
  CHECK(h.g->received == h.nic().packets);
  CHECK(h.g->lost_seqs == 0);
  CHECK(h.nic().drops == 0);
  CHECK(h.plat->vtd().counters().ir_faults == 0);
}

TEST_CASE("20 stage-1 restarts in a row at 100k packets/s: nothing lost") {
  host_fixture h;
  auto cur = std::make_unique<vmm>(*h.k, "vmm-0", *h.g, h.layout, h.ram, nic0);
  REQUIRE(cur->cold_start(100000));
  h.g->start();
  for (int i = 1; i <= 20; ++i) {
    h.run_for(5);
    h.g->pause();
    REQUIRE(cur->enter_keepalive(tok));
    cur->exit();
    auto next = std::make_unique<vmm>(*h.k, "vmm-" + std::to_string(i), *h.g, h.layout, h.ram, nic0);
    REQUIRE(next->reclaim(tok));
    h.g->resume();
    cur = std::move(next);
  }
  h.run_for(10);
  h.drain_guest();
  CHECK(h.g->received == h.nic().packets);
  CHECK(h.g->lost_seqs == 0);
  CHECK(h.g->corrupted == 0);
  CHECK(h.nic().drops == 0);
  CHECK(h.nic().resets == 1);
  CHECK(h.plat->vtd().counters().dma_faults == 0);
  CHECK(h.plat->vtd().counters().ir_faults == 0);
  CHECK(h.k->stats().spurious == 0);
}

TEST_CASE("a VMM killed halfway through a freeze: the entered device stays reclaimable, the other is released") {
  host_fixture h{kernel_mode::keepalive};
  // Two devices: the VMM entered keepalive on the first only, then died.
  platform_config pc;
  pc.phys_bytes = 96ull << 20;
  pc.nics = 2;
  h.g->stop();
  h.g.reset();
  h.k.reset();
  h.plat = std::move(*platform::create(pc));
  h.k = std::move(*kernel::boot(*h.plat, h.kcfg));
  h.g = std::make_unique<guest>(*h.plat, h.ram, h.layout, nic0);
  const bdf nic1{0, 0, 5, 0};
  guest_layout second = h.layout;
  second.ring_gpa = 0x800000;
  second.buffers_gpa = 0x900000;
  guest g1{*h.plat, h.ram, second, nic1};
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  vmm b{*h.k, "vmm-b", g1, second, h.ram, nic1};
  REQUIRE(a.cold_start(20000));
  REQUIRE(b.cold_start(20000));
  REQUIRE(a.enter_keepalive(tok));
  a.exit();  // killed: device 0 was entered
  b.exit();  // killed: device 1 was not
  auto ctl = h.k->spawn("ctl");
  const int cfd = *ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
  auto rows = abi::list_devices(*ctl, cfd);
  REQUIRE(rows);
  REQUIRE(rows->size() == 1);
  CHECK((*rows)[0].device == nic0);
  CHECK((*rows)[0].state == abi::device_state::ownerless);
  CHECK(h.plat->find_nic(nic1)->resets() == 2);  // opened (reset) and released (reset)
  CHECK(h.plat->find_nic(nic0)->resets() == 1);  // opened only
  // Output-array rules of LIST_DEVICES with one device listed.
  vfio_keepalive_list l{};
  l.size = sizeof l;
  l.nr_entries = 0;
  CHECK(ctl->ioctl(cfd, VFIO_KEEPALIVE_LIST_DEVICES, &l) == -EOVERFLOW);
  CHECK(l.nr_entries == 1);
  l.entries_uptr = 0;
  CHECK(ctl->ioctl(cfd, VFIO_KEEPALIVE_LIST_DEVICES, &l) == -EFAULT);
  vmm c{*h.k, "vmm-c", *h.g, h.layout, h.ram, nic0};
  REQUIRE(c.reclaim(tok));
}

TEST_CASE("stage 1 with posting: the vCPU's descriptor dies with its VM, posting moves to a kept one (SN set)") {
  host_fixture h;
  auto a = h.entered_vmm(tok);
  const auto owned = h.posted_irte();
  REQUIRE(owned);
  const hpa vcpu_pid = owned->pda();
  CHECK_FALSE(h.pid_at(vcpu_pid).control().sn());  // owned: the vCPU is notified
  a->exit();
  a.reset();
  const auto parked = h.posted_irte();
  REQUIRE(parked);
  const hpa kept = parked->pda();
  CHECK(kept != vcpu_pid);
  CHECK(h.pid_at(kept).control().sn());
  // The vCPU's descriptor was freed (zeroed) with its VM; nothing points at it.
  CHECK(h.pid_at(vcpu_pid).control().raw() == 0);
  REQUIRE(h.wait_pending(nic0));
  CHECK_FALSE(h.pid_at(kept).pending().empty());  // recorded in the kept PIR

  vmm b{*h.k, "vmm-b", *h.g, h.layout, h.ram, nic0};
  REQUIRE(b.reclaim(tok));
  const auto reconnected = h.posted_irte();
  REQUIRE(reconnected);  // b's vCPU descriptor (its slot may be the kept one's, freed and reused)
  CHECK_FALSE(h.pid_at(reconnected->pda()).control().sn());
  h.g->resume();
  h.run_for(30);
  h.drain_guest();
  CHECK(h.k->stats().preserved_drained == 1);
  CHECK(h.g->received == h.nic().packets);
  CHECK(h.g->lost_seqs == 0);
  CHECK(h.plat->vtd().counters().ir_faults == 0);
}
