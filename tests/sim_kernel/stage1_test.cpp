// Stage 1 against the oracles: the device streams while its VMM restarts.
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
  h.run_for(20);  // the device keeps streaming into guest RAM, interrupts accumulate in PIR

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
  h.run_for(20);
  CHECK(h.nic().irqs_masked > 0);
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
