// Stage 2: the sim kernel is destroyed and rebuilt from the handover image
// alone while the platform (and the device) keeps running.
#include <linux/vfio_keepalive.h>

#include <cstring>

#include "handover.hpp"
#include "host_fixture.hpp"
#include "keepalive_handover.h"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::testing;

namespace {
const token tok = *token::parse("9e2b1c3d-4f50-4a61-8b72-c3d4e5f60718");

struct control {
  explicit control(kernel& k) : proc{k.spawn("keepalivectl")} {
    auto r = proc->open(VFIO_KEEPALIVE_CTL_PATH, 0);
    REQUIRE(r);
    fd = *r;
  }
  std::vector<abi::device_entry> list() { return *abi::list_devices(*proc, fd); }
  std::shared_ptr<process> proc;
  int fd = -1;
};

// VMM A runs, enters keepalive and exits: the device is OWNERLESS and live.
// The ring is sized for the gap: 16384 descriptors hold 164 ms at 100k/s.
std::unique_ptr<vmm> run_and_leave(host_fixture& h, std::uint64_t rate = 100000) {
  h.layout.ring_entries = 16384;
  h.g = std::make_unique<guest>(*h.plat, h.ram, h.layout, nic0);
  auto a = std::make_unique<vmm>(*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0);
  REQUIRE(a->cold_start(rate));
  h.g->start();
  h.run_for(30);
  h.g->pause();
  REQUIRE(a->enter_keepalive(tok));
  a->exit();
  return a;
}
}  // namespace

TEST_CASE("stage 2: kexec with a streaming device, reclaimed after, nothing lost") {
  host_fixture h;
  run_and_leave(h);
  {
    control ctl{*h.k};
    auto prep = abi::stage2_prepare(*ctl.proc, ctl.fd);
    REQUIRE(prep);
    CHECK(prep->nr_devices == 1);
    CHECK(prep->image_bytes > sizeof(keepalive_handover_hdr_ser));
    CHECK(abi::stage2_prepare(*ctl.proc, ctl.fd).code() == errc::busy);  // already prepared
    REQUIRE(ctl.list().size() == 1);
    CHECK(ctl.list()[0].state == abi::device_state::frozen);
  }
  const auto packets_before = h.nic().packets;
  h.kexec();
  CHECK(host_fixture::eventually([&] { return h.nic().packets > packets_before; }));  // it never stopped
  REQUIRE(h.wait_pending(nic0));  // an interrupt raised while nobody owned it waits in PIR
  control ctl{*h.k};
  auto info = abi::get_info(*ctl.proc, ctl.fd);
  REQUIRE(info);
  CHECK(info->generation == 1);
  CHECK((info->caps & VFIO_KEEPALIVE_CAP_STAGE2) != 0);
  auto rows = ctl.list();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].state == abi::device_state::restored);
  CHECK(rows[0].nr_vectors == 1);
  CHECK(rows[0].nr_pending == 1);  // posted while nobody (not even a kernel) owned it
  CHECK(abi::read_event(*ctl.proc, ctl.fd).code() == errc::again);

  vmm c{*h.k, "vmm-c", *h.g, h.layout, h.ram, nic0};
  {
    auto st = c.reclaim(tok);
    const std::string why = st ? std::string{"ok"} : st.err().message();
    INFO(why);
    REQUIRE(st);
  }
  h.g->resume();
  h.run_for(30);
  h.drain_guest();
  CHECK(h.nic().resets == 1);  // the first open only
  CHECK(h.nic().drops == 0);
  CHECK(h.nic().dma_errors == 0);
  CHECK(h.g->received == h.nic().packets);
  CHECK(h.g->lost_seqs == 0);
  CHECK(h.g->corrupted == 0);
  CHECK(h.plat->vtd().counters().dma_faults == 0);
  CHECK(h.plat->vtd().counters().ir_faults == 0);
  CHECK(h.plat->vtd().counters().irq_no_cpu == 0);
  CHECK(h.k->stats().preserved_drained == 1);
  CHECK(h.k->stats().spurious == 0);
}

TEST_CASE("stage 2 twice before anyone reclaims, and abort") {
  host_fixture h;
  run_and_leave(h, 20000);  // three kexecs in the gap: 820 ms of ring at 20k/s
  for (int cycle = 1; cycle <= 2; ++cycle) {
    control ctl{*h.k};
    REQUIRE(abi::stage2_prepare(*ctl.proc, ctl.fd));
    h.kexec();
    control after{*h.k};
    CHECK(abi::get_info(*after.proc, after.fd)->generation == static_cast<std::uint64_t>(cycle));
    CHECK(after.list()[0].state == abi::device_state::restored);
  }
  {
    control ctl{*h.k};
    REQUIRE(abi::stage2_prepare(*ctl.proc, ctl.fd));
    auto ab = abi::stage2_abort(*ctl.proc, ctl.fd);
    REQUIRE(ab);
    CHECK(ab->nr_devices == 1);
    CHECK(ctl.list()[0].state == abi::device_state::ownerless);
    CHECK(abi::stage2_abort(*ctl.proc, ctl.fd).code() == errc::busy);
  }
  vmm c{*h.k, "vmm-c", *h.g, h.layout, h.ram, nic0};
  {
    auto st = c.reclaim(tok);
    const std::string why = st ? std::string{"ok"} : st.err().message();
    INFO(why);
    REQUIRE(st);
  }
  h.g->resume();
  h.run_for(20);
  h.drain_guest();
  CHECK(h.g->received == h.nic().packets);
  CHECK(h.g->lost_seqs == 0);
  CHECK(h.nic().resets == 1);
}

TEST_CASE("stage 2 prepare refuses while a kept-alive device is still owned") {
  host_fixture h;
  vmm a{*h.k, "vmm-a", *h.g, h.layout, h.ram, nic0};
  REQUIRE(a.cold_start(0));
  REQUIRE(a.enter_keepalive(tok));
  control ctl{*h.k};
  CHECK(abi::stage2_prepare(*ctl.proc, ctl.fd).code() == errc::busy);
  CHECK(ctl.list()[0].state == abi::device_state::kept_alive);
}

TEST_CASE("a corrupted handover image is refused whole: device reset safely, event raised") {
  host_fixture h;
  run_and_leave(h);
  {
    control ctl{*h.k};
    REQUIRE(abi::stage2_prepare(*ctl.proc, ctl.fd));
  }
  // One bit flips in preserved memory (the device record's token).
  auto* area = h.plat->memory().base() + h.kcfg.map.handover_start();
  area[sizeof(keepalive_handover_hdr_ser) + 40] ^= std::byte{0x10};
  const auto resets = h.nic().resets;
  h.kexec();
  control ctl{*h.k};
  CHECK(h.k->stats().handover_rejected == 1);
  CHECK(abi::get_info(*ctl.proc, ctl.fd)->generation == 1);  // counters continue
  CHECK(h.nic().resets == resets + 1);
  auto ev = abi::read_event(*ctl.proc, ctl.fd);
  REQUIRE(ev);
  CHECK(ev->type == VFIO_KEEPALIVE_EVENT_HANDOVER_REJECTED);
  CHECK(ev->error_number == EPROTO);
  CHECK(ev->device == nic0);
  auto rows = ctl.list();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].state == abi::device_state::error);
  // Nothing of the refused image is in use: the device is quiet and unmapped.
  const auto faults = h.plat->vtd().counters().dma_faults;
  h.run_for(10);
  CHECK(h.plat->vtd().counters().dma_faults == faults);
  vmm c{*h.k, "vmm-c", *h.g, h.layout, h.ram, nic0};
  CHECK(c.reclaim(tok).code() == errc::busy);  // ERROR is left only by reset
  c.exit();
  REQUIRE(abi::reset_device(*ctl.proc, ctl.fd, nic0));
  CHECK(ctl.list().empty());
  CHECK(abi::read_event(*ctl.proc, ctl.fd)->type == VFIO_KEEPALIVE_EVENT_RESET);
  CHECK(abi::reset_device(*ctl.proc, ctl.fd, nic0).code() == errc::busy);  // running: not a reset arc
  CHECK(abi::reset_device(*ctl.proc, ctl.fd, bdf{0, 0, 9, 0}).code() == errc::not_found);
}

TEST_CASE("a device whose BAR moved across kexec fails enumeration: ENUM_FAILED, reset") {
  host_fixture h;
  run_and_leave(h);
  {
    control ctl{*h.k};
    REQUIRE(abi::stage2_prepare(*ctl.proc, ctl.fd));
  }
  h.plat->find(nic0)->config_write(0x10, 4, 0xd0000004);  // firmware moved it
  h.kexec();
  control ctl{*h.k};
  auto ev = abi::read_event(*ctl.proc, ctl.fd);
  REQUIRE(ev);
  CHECK(ev->type == VFIO_KEEPALIVE_EVENT_ENUM_FAILED);
  CHECK(ctl.list()[0].state == abi::device_state::error);
}

TEST_CASE("kexec without stage 2: the kept-alive device is shut down like any other (the loss is visible)") {
  host_fixture h;
  run_and_leave(h);
  h.kexec();
  control ctl{*h.k};
  CHECK(ctl.list().empty());  // the new kernel knows nothing of it
  // Bus mastering was cleared by the shutdown path: the wire's packets drop.
  for (int i = 0; i < 500 && h.nic().drops == 0; ++i) h.run_for(2);
  CHECK(h.nic().drops > 0);
}
