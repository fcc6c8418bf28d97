// Patch 0009's drain run on what the simulated host's IOMMU really posted: a VMM exits in
// keepalive, the NIC's interrupts go into the sim kernel's kept descriptor (SN set); the
// kernel header drains a snapshot of it into a descriptor like the next VMM's, and the
// result is compared with what the sim kernel's own reconnect delivered.
#include <doctest/doctest.h>

#include <cstring>
#include <memory>

#include <keepalive/hw/posted_intr.hpp>

#include "../sim_kernel/host_fixture.hpp"
#include "kernel_shim.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::testing;

namespace {
const token tok = *token::parse("6c2d8b7f-3e1a-4f22-8b4d-1e6f70819203");

hw::posted_intr_desc snapshot(const host_fixture& h, hpa a) {
  const auto& live = h.pid_at(a);
  hw::posted_intr_desc copy;
  copy.init_nonatomic(vector{0}, 0);
  copy.set_pir_nonatomic(live.pending());
  copy.update_control([&](hw::pi_control) { return live.control(); });
  return copy;
}
}  // namespace

TEST_CASE("the sim IOMMU's kept descriptor, drained by the kernel header == the sim kernel's reconnect") {
  host_fixture h;
  auto a = h.entered_vmm(tok);
  const auto owned = h.posted_irte();
  REQUIRE(owned);
  a->exit();
  a.reset();

  // Interrupts while nobody owns the device land in the kept descriptor; then the wire stops.
  REQUIRE(h.wait_pending(nic0));
  h.plat->find_nic(nic0)->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  h.run_for(5);  // a moderated interrupt still due arrives
  const auto kept_irte = h.posted_irte();
  REQUIRE(kept_irte);
  const hpa kept_at = kept_irte->pda();
  CHECK(kept_at != owned->pda());
  hw::posted_intr_desc kept = snapshot(h, kept_at);
  CHECK(kept.control_nonatomic().sn());
  CHECK(!kept.control_nonatomic().on());  // SN: the IOMMU recorded without notifying
  hw::vector_set only_ours;
  only_ours.set(kept_irte->vector());
  CHECK(kept.pir_nonatomic() == only_ours);  // exactly the IRTE's vector, pending

  const auto before = h.k->stats();
  vmm b{*h.k, "vmm-b", *h.g, h.layout, h.ram, nic0};
  REQUIRE(b.reclaim(tok));
  const auto after = h.k->stats();
  const auto reconnected = h.posted_irte();
  REQUIRE(reconnected);
  const hw::posted_intr_desc target_now = snapshot(h, reconnected->pda());

  // The next VMM's descriptor as the drain found it: fresh (PIR empty, ON clear), SN clear,
  // its NV and NDST.
  hw::posted_intr_desc target;
  target.init_nonatomic(target_now.control_nonatomic().nv(), target_now.control_nonatomic().ndst(), false);
  CHECK(!target_now.control_nonatomic().sn());

  kvm_pi::keepalive_pi_retag(kvm_pi::as_kernel(kept), kept_irte->vector().value(), reconnected->vector().value());
  kvm_pi::keepalive_pi_drained out{};
  CHECK(kvm_pi::keepalive_pi_drain(kvm_pi::as_kernel(kept), kvm_pi::as_kernel(target), &out));
  hw::vector_set want;
  want.set(reconnected->vector());
  CHECK(hw::vector_set::from_words({out.pir[0], out.pir[1], out.pir[2], out.pir[3]}) == want);
  CHECK(target.pir_nonatomic() == want);
  CHECK(out.notify);
  CHECK(kept.pir_nonatomic().empty());

  // The sim kernel moved the same one vector and delivered it (through the new owner's
  // eventfd or its irqfd, depending on which it connected first).
  CHECK(after.preserved_drained - before.preserved_drained == 1);
  CHECK((after.irqfd_signals - before.irqfd_signals) + (after.eventfd_signals - before.eventfd_signals) >= 1);
  CHECK(target_now.pir_nonatomic().empty());
  CHECK(!target_now.control_nonatomic().on());
}
