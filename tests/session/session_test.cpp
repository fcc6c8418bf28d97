// keepalive::session against the in-process sim host: the VMM restart cycle
// in one place, all-or-nothing on every path, judged by the oracles (packets,
// drops, DMA and IR faults, lost interrupts).
#include <algorithm>
#include <map>

#include <poll.h>
#include <unistd.h>

#include "session_fixture.hpp"

using namespace keepalive;
using namespace keepalive::session_test;

namespace {

// VMM A cold-starts, streams, pauses its vCPUs, freezes and hands over; the
// process exits. Returns the snapshot as written to the VMM's state file.
std::vector<std::byte> run_and_hand_over(multi_host& h, freeze_options opt = {}) {
  vmm_proc a{h, "vmm-a"};
  {
    auto st = a.cold_start();
    INFO(why(st));
    REQUIRE(st);
  }
  h.start_guests();
  h.wait_received();
  h.pause_guests();
  auto snap = a.s.freeze(tok, h.vm_state(), opt);
  INFO(why(snap));
  REQUIRE(snap);
  auto bytes = encode_snapshot(*snap);
  REQUIRE(bytes);
  REQUIRE(a.s.hand_over());
  a.proc->exit();
  // Nobody owns the NICs; each raises an interrupt that must survive.
  if (opt.allow_masking) {
    for (unsigned i = 0; i < h.nics(); ++i)
      REQUIRE(multi_host::eventually([&] { return h.stats(i).irqs_masked > 0; }));  // held in the PBA
  } else {
    control{*h.k}.wait_all_pending(h.nics());
  }
  return std::move(*bytes);
}

snapshot decoded(const std::vector<std::byte>& bytes) {
  auto s = decode_snapshot(bytes);
  INFO(why(s));
  REQUIRE(s);
  return std::move(*s);
}

// Reclaim in a new VMM process, resume the guests, and judge.
void reclaim_and_check(multi_host& h, const snapshot& snap, std::uint64_t drained) {
  vmm_proc b{h, "vmm-b"};
  {
    auto st = b.s.reclaim(snap, b.w);
    INFO(why(st));
    REQUIRE(st);
  }
  CHECK(b.s.phase() == session_phase::running);
  for (unsigned i = 0; i < h.nics(); ++i) CHECK(b.state_of(i) == abi::device_state::running);
  h.resume_guests();
  h.wait_received();
  h.drain();
  h.check_no_loss();
  CHECK(h.k->stats().preserved_drained == drained);
  CHECK(h.k->stats().device_resets == h.nics());  // the first open of each NIC only
}

// Fails the n-th (0-based) ioctl `cmd` once with `e`; the kernel never sees it.
class faulty_syscalls final : public abi::syscalls {
 public:
  explicit faulty_syscalls(abi::syscalls& inner) : inner_{inner} {}
  void fail(unsigned long cmd, unsigned nth, errc e) { faults_[cmd] = {nth, e}; }
  long ioctl(int fd, unsigned long cmd, void* arg) override {
    if (auto it = faults_.find(cmd); it != faults_.end()) {
      if (it->second.first == 0) {
        const errc e = it->second.second;
        faults_.erase(it);
        return -static_cast<long>(e);
      }
      --it->second.first;
    }
    return inner_.ioctl(fd, cmd, arg);
  }
  result<int> open(std::string_view path, int flags) override { return inner_.open(path, flags); }
  errc close(int fd) override { return inner_.close(fd); }
  result<std::size_t> pread(int fd, std::span<std::byte> out, std::uint64_t off) override {
    return inner_.pread(fd, out, off);
  }
  result<std::size_t> pwrite(int fd, std::span<const std::byte> in, std::uint64_t off) override {
    return inner_.pwrite(fd, in, off);
  }

 private:
  abi::syscalls& inner_;
  std::map<unsigned long, std::pair<unsigned, errc>> faults_;
};

// sim_wiring whose connect fails once for one device.
class failing_wiring final : public interrupt_wiring {
 public:
  failing_wiring(sim_wiring& inner, std::size_t fail_device) : inner_{inner}, fail_device_{fail_device} {}
  result<int> eventfd(const vector_binding& b) override { return inner_.eventfd(b); }
  status connect(const vector_binding& b, int efd) override {
    if (b.device_index == fail_device_ && armed) {
      armed = false;
      return {errc::io, "vCPU thread gone"};
    }
    return inner_.connect(b, efd);
  }
  void rolled_back(std::span<const vector_binding> connected) noexcept override {
    rolled_back_with.assign(connected.begin(), connected.end());
    inner_.rolled_back(connected);
  }
  bool armed = true;
  std::vector<vector_binding> rolled_back_with;

 private:
  sim_wiring& inner_;
  std::size_t fail_device_;
};

std::vector<mark_kind> kinds(const std::vector<timing_mark>& marks) {
  std::vector<mark_kind> out;
  for (const auto& m : marks) out.push_back(m.kind);
  return out;
}

}  // namespace

TEST_CASE("stage 1 through the session: three NICs stream while the VMM restarts, nothing lost") {
  multi_host h;
  std::vector<std::byte> bytes;
  {
    vmm_proc a{h, "vmm-a"};
    REQUIRE(a.cold_start());
    CHECK(a.s.phase() == session_phase::running);
    CHECK(a.w.posted() == 3);
    CHECK(a.w.descriptors() == 2);  // one per vCPU
    h.start_guests();
    h.wait_received();
    h.pause_guests();
    a.s.clear_timeline();
    auto snap = a.s.freeze(tok, h.vm_state());
    INFO(why(snap));
    REQUIRE(snap);
    CHECK(a.s.phase() == session_phase::frozen);
    CHECK(a.s.owner_token() == tok);
    for (unsigned i = 0; i < 3; ++i) CHECK(a.state_of(i) == abi::device_state::kept_alive);
    // The snapshot holds what the next VMM needs, never guest RAM.
    CHECK(snap->owner == tok);
    CHECK(snap->nr_vcpus == 2);
    REQUIRE(snap->devices.size() == 3);
    for (unsigned i = 0; i < 3; ++i) {
      CHECK(snap->devices[i].address == nic_bdf(i));
      CHECK(snap->devices[i].group == nic_bdf(i).devfn());
      CHECK(snap->devices[i].mode == abi::irq_mode::posted);
      CHECK(snap->devices[i].vectors == h.specs()[i].vectors);
    }
    CHECK(snap->ram == h.regions());
    CHECK(snap->vcpu_state == h.vm_state().vcpu_state);
    CHECK(snap->extra == h.vm_state().extra);
    bytes = *encode_snapshot(*snap);
    CHECK(bytes.size() < 4096);  // 16 MiB of guest RAM, a few hundred bytes of snapshot
    REQUIRE(a.s.hand_over());
    CHECK(a.s.phase() == session_phase::handed_over);
    CHECK(a.s.device_fd(0) == -1);
    const auto marks = a.s.timeline();
    CHECK(kinds(marks) == std::vector<mark_kind>{mark_kind::freeze_begin, mark_kind::enter, mark_kind::enter,
                                                 mark_kind::enter, mark_kind::snapshot, mark_kind::freeze_end,
                                                 mark_kind::hand_over});
    CHECK(std::is_sorted(marks.begin(), marks.end(), [](auto& x, auto& y) { return x.at < y.at; }));
    CHECK(marks[1].device == 0);
    CHECK(marks[3].device == 2);
    a.proc->exit();
  }
  // Nobody owns the NICs: DMA continues, interrupts accumulate in the PIRs.
  control ctl{*h.k};
  ctl.check_all_ownerless(3);
  ctl.wait_all_pending(3);

  vmm_proc b{h, "vmm-b"};
  const auto snap = decoded(bytes);
  {
    auto st = b.s.reclaim(snap, b.w);
    INFO(why(st));
    REQUIRE(st);
  }
  CHECK(ctl.list().empty());  // all RUNNING again
  CHECK(b.w.posted() == 3);
  const auto marks = b.s.timeline();
  CHECK(kinds(marks) == std::vector<mark_kind>{mark_kind::reclaim_begin, mark_kind::reclaim_open,
                                               mark_kind::reclaim_open, mark_kind::reclaim_open, mark_kind::map,
                                               mark_kind::set_irqs, mark_kind::connect, mark_kind::set_irqs,
                                               mark_kind::connect, mark_kind::set_irqs, mark_kind::connect,
                                               mark_kind::leave, mark_kind::leave, mark_kind::leave,
                                               mark_kind::reclaim_end});
  CHECK(std::is_sorted(marks.begin(), marks.end(), [](auto& x, auto& y) { return x.at < y.at; }));
  h.resume_guests();
  h.wait_received();
  h.drain();
  h.check_no_loss();
  CHECK(h.k->stats().preserved_drained == 3);  // each NIC's gap interrupt was delivered
  CHECK(h.k->stats().device_resets == 3);
}

TEST_CASE("freeze is all-or-nothing: device 3 refuses, devices 1-2 leave again and keep streaming") {
  multi_host h;
  vmm_proc a{h, "vmm-a"};
  REQUIRE(a.cold_start());
  h.start_guests();
  h.wait_received();
  // Device 3 is already in keepalive (another agent of the VMM armed it).
  REQUIRE(abi::keepalive_enter(*a.proc, a.s.device_fd(2), tok));
  h.pause_guests();
  auto r = a.s.freeze(tok, h.vm_state());
  REQUIRE(!r);
  CHECK(r.code() == errc::busy);
  const auto msg = r.err().message();
  INFO(msg);
  CHECK(msg.starts_with("EBUSY (not a legal transition from the current state): enter 0000:00:06.0 (device 3 of 3)"));
  CHECK(msg.find("devices 1-2 left keepalive again, the VM keeps running") != std::string::npos);
  CHECK(a.s.phase() == session_phase::running);
  CHECK(a.state_of(0) == abi::device_state::running);
  CHECK(a.state_of(1) == abi::device_state::running);
  CHECK(a.state_of(2) == abi::device_state::kept_alive);
  REQUIRE(abi::keepalive_leave(*a.proc, a.s.device_fd(2), tok));
  h.resume_guests();  // the VM carries on as if nothing happened
  h.wait_received();
  // The session is whole: the next freeze succeeds and thaw undoes it.
  h.pause_guests();
  REQUIRE(a.s.freeze(tok, h.vm_state()));
  for (unsigned i = 0; i < 3; ++i) CHECK(a.state_of(i) == abi::device_state::kept_alive);
  REQUIRE(a.s.thaw());
  CHECK(a.s.phase() == session_phase::running);
  for (unsigned i = 0; i < 3; ++i) CHECK(a.state_of(i) == abi::device_state::running);
  h.resume_guests();
  h.wait_received();
  h.drain();
  h.check_no_loss();
}

TEST_CASE("no posted interrupts: freeze without masking is refused on device 1, with masking nothing is lost") {
  {
    multi_host h{3, false};
    vmm_proc a{h, "vmm-a"};
    REQUIRE(a.cold_start());
    CHECK(a.w.posted() == 0);
    CHECK(a.w.remapped() == 3);  // the eventfd delivers
    auto r = a.s.freeze(tok, h.vm_state());
    REQUIRE(!r);
    CHECK(r.code() == errc::not_supported);
    INFO(r.err().message());
    CHECK(r.err().message().find("enter 0000:00:04.0 (device 1 of 3)") != std::string::npos);
    CHECK(r.err().message().find("nothing to undo") != std::string::npos);
    CHECK(a.s.phase() == session_phase::running);
    for (unsigned i = 0; i < 3; ++i) CHECK(a.state_of(i) == abi::device_state::running);
  }
  multi_host h{3, false};
  const auto bytes = run_and_hand_over(h, {.allow_masking = true});
  const auto snap = decoded(bytes);
  for (const auto& d : snap.devices) CHECK(d.mode == abi::irq_mode::masked);
  vmm_proc b{h, "vmm-b"};
  {
    auto st = b.s.reclaim(snap, b.w);
    INFO(why(st));
    REQUIRE(st);
  }
  h.resume_guests();
  h.wait_received();
  h.drain();
  h.check_no_loss();
}

TEST_CASE("reclaim with a wrong token: EACCES, nothing half-done, then the right token succeeds") {
  multi_host h;
  const auto bytes = run_and_hand_over(h);
  h.run_for(10);
  auto wrong = decoded(bytes);
  wrong.owner = wrong_tok;
  control ctl{*h.k};
  {
    vmm_proc b{h, "vmm-b"};
    auto st = b.s.reclaim(wrong, b.w);
    REQUIRE(!st);
    CHECK(st.code() == errc::access_denied);
    const auto msg = st.err().message();
    INFO(msg);
    CHECK(msg.starts_with("EACCES (wrong or missing token): reclaim 0000:00:04.0 (device 1 of 3)"));
    CHECK(msg.find("nothing was reclaimed") != std::string::npos);
    CHECK(msg.find("fallback_reset then open") != std::string::npos);
    CHECK(b.s.phase() == session_phase::idle);
    CHECK(b.s.device_fd(0) == -1);
    CHECK(b.s.container_fd() == -1);
    ctl.check_all_ownerless(3);
  }
  reclaim_and_check(h, decoded(bytes), 3);
}

TEST_CASE("reclaim fails at device 3 (its group is held elsewhere): devices 1-2 are put back, still reclaimable") {
  multi_host h;
  const auto bytes = run_and_hand_over(h);
  const auto snap = decoded(bytes);
  auto thief = h.k->spawn("other-vmm");
  auto held = thief->open("/dev/vfio/" + std::to_string(nic_bdf(2).devfn()), 0);
  REQUIRE(held);
  control ctl{*h.k};
  {
    vmm_proc b{h, "vmm-b"};
    auto st = b.s.reclaim(snap, b.w);
    REQUIRE(!st);
    CHECK(st.code() == errc::busy);
    const auto msg = st.err().message();
    INFO(msg);
    CHECK(msg.find("reclaim 0000:00:06.0 (device 3 of 3): open /dev/vfio/48") != std::string::npos);
    CHECK(msg.find("devices 1-2 put back (OWNERLESS, still reclaimable)") != std::string::npos);
    CHECK(b.s.phase() == session_phase::idle);
    ctl.check_all_ownerless(3);
    // The session kept the snapshot's configuration for a fallback.
    CHECK(b.s.devices().size() == 3);
    CHECK(b.s.ram() == snap.ram);
  }
  REQUIRE(thief->close(*held) == errc::ok);
  h.run_for(10);
  reclaim_and_check(h, snap, 3);
}

TEST_CASE("reclaim fails when the wiring cannot connect device 3: reconnected vectors are preserved again") {
  multi_host h;
  const auto bytes = run_and_hand_over(h);
  const auto snap = decoded(bytes);
  control ctl{*h.k};
  vmm_proc b{h, "vmm-b"};
  failing_wiring fw{b.w, 2};
  auto st = b.s.reclaim(snap, fw);
  REQUIRE(!st);
  CHECK(st.code() == errc::io);
  INFO(st.err().message());
  CHECK(st.err().message().find("connect 0000:00:06.0 (device 3 of 3) MSI-X 0 to vCPU 0 as vector 0x42: vCPU thread gone") !=
        std::string::npos);
  CHECK(st.err().message().find("devices 1-3 put back") != std::string::npos);
  REQUIRE(fw.rolled_back_with.size() == 3);  // devices 1-2 connected, device 3 attempted
  CHECK(fw.rolled_back_with[2].device == nic_bdf(2));
  CHECK(b.s.phase() == session_phase::idle);
  ctl.check_all_ownerless(3);
  h.run_for(10);  // interrupts now accumulate in the descriptors the failed attempt connected
  {
    auto again = b.s.reclaim(snap, fw);
    INFO(why(again));
    REQUIRE(again);
  }
  CHECK(ctl.list().empty());
  h.resume_guests();
  h.wait_received();
  h.drain();
  h.check_no_loss();
}

TEST_CASE("a LEAVE that fails on device 3 re-enters devices 1-2 and puts everything back") {
  multi_host h;
  const auto bytes = run_and_hand_over(h);
  const auto snap = decoded(bytes);
  control ctl{*h.k};
  vmm_proc b{h, "vmm-b"};
  faulty_syscalls faulty{*b.proc};
  {
    session s{faulty};
    faulty.fail(VFIO_DEVICE_KEEPALIVE_LEAVE, 2, errc::io);
    auto st = s.reclaim(snap, b.w);
    REQUIRE(!st);
    CHECK(st.code() == errc::io);
    INFO(st.err().message());
    CHECK(st.err().message().find("leave 0000:00:06.0 (device 3 of 3)") != std::string::npos);
    CHECK(st.err().message().find("devices 1-3 put back") != std::string::npos);
    CHECK(s.phase() == session_phase::idle);
    ctl.check_all_ownerless(3);
    auto again = s.reclaim(snap, b.w);
    INFO(why(again));
    REQUIRE(again);
    h.resume_guests();
    h.wait_received();
    h.drain();
    h.check_no_loss();
  }  // (closing the session now releases the devices as VFIO always does)
}

TEST_CASE("a rollback that fails leaves the session broken: only close is accepted") {
  multi_host h;
  vmm_proc a{h, "vmm-a"};
  REQUIRE(a.cold_start());
  faulty_syscalls faulty{*a.proc};
  // A second session over the same devices is not possible (groups are
  // exclusive): hand the first one's devices over by closing it, then
  // cold-open through the faulty seam.
  REQUIRE(a.s.close());
  session s{faulty};
  for (auto& d : h.specs()) REQUIRE(s.add_device(d));
  for (auto& r : h.regions()) REQUIRE(s.add_ram(r));
  REQUIRE(s.open(a.w));
  faulty.fail(VFIO_DEVICE_KEEPALIVE_ENTER, 2, errc::no_memory);  // device 3 refuses
  faulty.fail(VFIO_DEVICE_KEEPALIVE_LEAVE, 0, errc::io);         // and undoing device 1 fails
  auto r = s.freeze(tok, h.vm_state());
  REQUIRE(!r);
  CHECK(r.code() == errc::no_memory);
  INFO(r.err().message());
  CHECK(r.err().message().find("rollback failed: leave 0000:00:04.0 (device 1 of 3)") != std::string::npos);
  CHECK(s.phase() == session_phase::broken);
  CHECK(s.freeze(tok, h.vm_state()).code() == errc::busy);
  CHECK(s.thaw().code() == errc::busy);
  CHECK(s.hand_over().code() == errc::busy);
  REQUIRE(s.close());
  CHECK(s.phase() == session_phase::idle);
  // Devices 1-2 were still KEPT_ALIVE when their fds closed: OWNERLESS, reclaimable.
  control ctl{*h.k};
  auto rows = ctl.list();
  REQUIRE(rows.size() == 2);
  for (unsigned i = 0; i < 2; ++i) {
    CHECK(rows[i].device == nic_bdf(i));
    CHECK(rows[i].state == abi::device_state::ownerless);
  }
}

TEST_CASE("fallback: a device reset by the operator cannot be reclaimed, fallback_reset + cold open bring the VM back") {
  multi_host h;
  const auto bytes = run_and_hand_over(h);
  const auto snap = decoded(bytes);
  vmm_proc b{h, "vmm-b"};
  REQUIRE(b.s.fallback_reset(nic_bdf(2)));  // e.g. keepalivectl reset 0000:00:06.0
  CHECK(b.s.fallback_reset(nic_bdf(2)).code() == errc::busy);  // RUNNING now: not a reset arc
  CHECK(b.s.fallback_reset(bdf{0, 0, 9, 0}).code() == errc::not_found);
  auto st = b.s.reclaim(snap, b.w);
  REQUIRE(!st);
  CHECK(st.code() == errc::not_found);
  INFO(st.err().message());
  CHECK(st.err().message().find("reclaim 0000:00:06.0 (device 3 of 3): VFIO_GROUP_GET_DEVICE_FD") != std::string::npos);
  CHECK(st.err().message().find("devices 1-2 put back") != std::string::npos);
  CHECK(st.err().message().find("open it cold") != std::string::npos);
  control ctl{*h.k};
  CHECK(ctl.list().size() == 2);
  // reset_and_reinit: every device of the snapshot, then a cold open of the
  // same configuration; the guest driver re-initialises each NIC.
  REQUIRE(b.s.fallback_reset(snap));
  CHECK(ctl.list().empty());
  {
    auto open = b.s.open(b.w);
    INFO(why(open));
    REQUIRE(open);
  }
  for (unsigned i = 0; i < 3; ++i) REQUIRE(b.program(i));
  h.resume_guests();
  h.wait_received();  // streaming again
  h.drain();
  for (unsigned i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(h.guests[i]->corrupted == 0);
    CHECK(h.stats(i).resets >= 2);  // the fallback is a reset: the loss is visible, not silent
  }
  CHECK(h.plat->vtd().counters().ir_faults == 0);
}

TEST_CASE("session calls in the wrong phase return EBUSY and change nothing") {
  multi_host h{1};
  vmm_proc a{h, "vmm-a"};
  auto& s = a.s;
  const auto st = h.vm_state();
  CHECK(s.phase() == session_phase::idle);
  CHECK(s.freeze(tok, st).code() == errc::busy);
  CHECK(s.thaw().code() == errc::busy);
  CHECK(s.hand_over().code() == errc::busy);
  CHECK(s.close().code() == errc::busy);
  CHECK(s.open(a.w).code() == errc::invalid);  // legal, but no devices
  a.describe();
  REQUIRE(s.open(a.w));
  CHECK(s.open(a.w).code() == errc::busy);
  CHECK(s.open(a.w).err().message() == "EBUSY (not a legal transition from the current state): session is running: open not allowed");
  CHECK(s.add_device({nic_bdf(1), 0, {}}).code() == errc::busy);
  CHECK(s.add_ram(h.regions()[0]).code() == errc::busy);
  CHECK(s.add_vector(0, {msix_index{1}, vector{0x50}, 0}).code() == errc::busy);
  CHECK(s.thaw().code() == errc::busy);
  CHECK(s.hand_over().code() == errc::busy);
  CHECK(s.fallback_reset(nic_bdf(0)).code() == errc::busy);
  snapshot other;
  CHECK(s.reclaim(other, a.w).code() == errc::busy);
  CHECK(!s.owner_token());
  REQUIRE(s.freeze(tok, st));
  CHECK(s.freeze(tok, st).code() == errc::busy);
  CHECK(s.open(a.w).code() == errc::busy);
  CHECK(s.close().code() == errc::busy);
  CHECK(a.state_of(0) == abi::device_state::kept_alive);
  REQUIRE(s.thaw());
  CHECK(a.state_of(0) == abi::device_state::running);
  REQUIRE(s.freeze(tok, st));
  REQUIRE(s.hand_over());
  CHECK(s.owner_token() == tok);
  for (auto code : {s.open(a.w).code(), s.freeze(tok, st).code(), s.thaw().code(), s.hand_over().code(),
                    s.close().code(), s.reclaim(other, a.w).code(), s.fallback_reset(nic_bdf(0)).code()})
    CHECK(code == errc::busy);
}

TEST_CASE("freeze checks its arguments before entering anything") {
  multi_host h{1};
  vmm_proc a{h, "vmm-a"};
  REQUIRE(a.cold_start());
  CHECK(a.s.freeze(token{}, h.vm_state()).code() == errc::invalid);
  auto st = h.vm_state();
  st.nr_vcpus = 1;  // but a blob for vCPU 1
  auto r = a.s.freeze(tok, st);
  CHECK(r.code() == errc::invalid);
  INFO(r.err().message());
  CHECK(r.err().message().find("vCPU state for vCPU 1 of 1") != std::string::npos);
  st = h.vm_state();
  st.vcpu_state.push_back(st.vcpu_state[0]);
  CHECK(a.s.freeze(tok, st).code() == errc::invalid);
  CHECK(a.state_of(0) == abi::device_state::running);
  CHECK(a.s.phase() == session_phase::running);
}

TEST_CASE("describing the VM: inconsistent devices, vectors and RAM are refused when added") {
  multi_host h{1};
  vmm_proc a{h, "vmm-a"};
  auto& s = a.s;
  REQUIRE(s.add_device({nic_bdf(0), nic_bdf(0).devfn(), {}}) );
  CHECK(s.add_device({nic_bdf(0), 0, {}}).code() == errc::invalid);  // twice
  CHECK(s.add_vector(1, {msix_index{0}, vector{0x40}, 0}).code() == errc::invalid);  // no such device
  REQUIRE(s.add_vector(0, {msix_index{0}, vector{0x40}, 0}));
  CHECK(s.add_vector(0, {msix_index{0}, vector{0x41}, 0}).code() == errc::invalid);  // index repeated
  CHECK(s.add_vector(0, {msix_index{1}, vector{0x0e}, 0}).code() == errc::invalid);  // exception vector
  CHECK(s.devices()[0].vectors.size() == 1);
  const auto regions = h.regions();
  REQUIRE(s.add_ram(regions[0]));
  CHECK(s.add_ram(regions[0]).code() == errc::invalid);  // overlaps itself
  auto odd = regions[1];
  odd.bytes = 0x1234;
  CHECK(s.add_ram(odd).code() == errc::invalid);
  REQUIRE(s.add_ram(regions[1]));
  CHECK(s.ram().size() == 2);
}

namespace {

// What the guest's eventfd holds now (read without blocking; 0 when nothing).
std::uint64_t take_signals(int efd) {
  pollfd p{efd, POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return 0;
  std::uint64_t n = 0;
  REQUIRE(::read(efd, &n, sizeof n) == sizeof n);
  return n;
}

// Stops every NIC's wire (as the link partner) and waits until no interrupt
// is raised any more (moderation timers fired).
void quiesce_wire(multi_host& h) {
  for (unsigned i = 0; i < h.nics(); ++i) h.plat->find_nic(nic_bdf(i))->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  std::vector<std::uint64_t> irqs(h.nics(), ~std::uint64_t{0});
  REQUIRE(multi_host::eventually([&] {
    bool same = true;
    for (unsigned i = 0; i < h.nics(); ++i) {
      const auto now = h.stats(i).irqs;
      same = same && now == irqs[i];
      irqs[i] = now;
    }
    multi_host::run_for(5);  // > the 200 us moderation timer, on a loaded machine
    return same;
  }));
}

void restart_wire(multi_host& h) {
  for (unsigned i = 0; i < h.nics(); ++i) h.plat->find_nic(nic_bdf(i))->mmio_write(0, KA_NIC_RATE_PPS, 8, rate_pps);
}

}  // namespace

TEST_CASE("close-first order: freeze(tok) + hand_over before the vCPU state; an interrupt after the close reaches the new owner once") {
  multi_host h;
  vmm_proc a{h, "vmm-a"};
  REQUIRE(a.cold_start());
  h.start_guests();
  h.wait_received();
  h.pause_guests();  // vCPUs paused
  a.s.clear_timeline();
  auto snap = a.s.freeze(tok);
  INFO(why(snap));
  REQUIRE(snap);
  CHECK(a.s.phase() == session_phase::frozen);
  CHECK(snap->nr_vcpus == 0);
  CHECK(snap->vcpu_state.empty());
  REQUIRE(snap->devices.size() == 3);
  for (unsigned i = 0; i < 3; ++i) CHECK(snap->devices[i].mode == abi::irq_mode::posted);
  CHECK(snap->ram == h.regions());
  // Half a snapshot is never written.
  CHECK(encode_snapshot(*snap).code() == errc::invalid);
  REQUIRE(a.s.hand_over());
  CHECK(a.s.phase() == session_phase::handed_over);
  CHECK(kinds(a.s.timeline()) == std::vector<mark_kind>{mark_kind::freeze_begin, mark_kind::enter, mark_kind::enter,
                                                        mark_kind::enter, mark_kind::snapshot, mark_kind::freeze_end,
                                                        mark_kind::hand_over});
  // What was signalled up to the close is the old VM's (in its LAPIC when the
  // state is collected now).
  std::vector<std::uint64_t> old_vm(h.nics());
  for (unsigned i = 0; i < h.nics(); ++i) old_vm[i] = take_signals(h.guests[i]->irq_fd());
  // Interrupts raised between the close and the state collection post into
  // the preserved descriptors, never into the old VM.
  control ctl{*h.k};
  ctl.check_all_ownerless(3);
  ctl.wait_all_pending(3);
  quiesce_wire(h);
  for (unsigned i = 0; i < h.nics(); ++i) {
    CAPTURE(i);
    CHECK(take_signals(h.guests[i]->irq_fd()) == 0);
  }
  // The state collected after the close completes the snapshot.
  auto bad = h.vm_state();
  bad.vcpu_state.push_back(bad.vcpu_state[0]);  // duplicate (vcpu, tag)
  const snapshot before = *snap;
  CHECK(add_vmm_state(*snap, bad).code() == errc::invalid);
  CHECK(*snap == before);
  REQUIRE(add_vmm_state(*snap, h.vm_state()));
  CHECK(snap->nr_vcpus == 2);
  CHECK(snap->vcpu_state == h.vm_state().vcpu_state);
  auto bytes = encode_snapshot(*snap);
  REQUIRE(bytes);
  a.proc->exit();

  vmm_proc b{h, "vmm-b"};
  const auto got = decoded(*bytes);
  CHECK(got == *snap);
  const auto drained_before = h.k->stats().preserved_drained;
  {
    auto st = b.s.reclaim(got, b.w);
    INFO(why(st));
    REQUIRE(st);
  }
  // Exactly one delivery per NIC: the drained pending vector, nothing twice.
  CHECK(h.k->stats().preserved_drained - drained_before == 3);
  for (unsigned i = 0; i < h.nics(); ++i) {
    CAPTURE(i);
    CHECK(take_signals(h.guests[i]->irq_fd()) == 1);
  }
  for (unsigned i = 0; i < h.nics(); ++i) h.guests[i]->poll_once();  // the guest handles it
  h.resume_guests();
  restart_wire(h);
  h.wait_received();
  h.drain();
  h.check_no_loss();
  CHECK(h.k->stats().device_resets == 3);
}

TEST_CASE("close-first order: a failure after the close calls the restart off, the devices come back to the same VM") {
  multi_host h;
  vmm_proc a{h, "vmm-a"};
  REQUIRE(a.cold_start());
  h.start_guests();
  h.wait_received();
  h.pause_guests();
  // call_off only after a hand-over.
  CHECK(a.s.call_off(a.w).code() == errc::busy);
  auto snap = a.s.freeze(tok);
  REQUIRE(snap);
  CHECK(a.s.call_off(a.w).code() == errc::busy);
  CHECK(a.s.phase() == session_phase::frozen);
  REQUIRE(a.s.hand_over());
  control ctl{*h.k};
  ctl.wait_all_pending(3);
  // Collecting the vCPU state failed (KVM_GET_LAPIC, say): the VMM calls the
  // restart off and reclaims into the VM it still runs.
  const auto drained_before = h.k->stats().preserved_drained;
  {
    auto st = a.s.call_off(a.w);
    INFO(why(st));
    REQUIRE(st);
  }
  CHECK(a.s.phase() == session_phase::running);
  CHECK(!a.s.owner_token());
  for (unsigned i = 0; i < 3; ++i) CHECK(a.state_of(i) == abi::device_state::running);
  CHECK(ctl.list().empty());
  CHECK(a.w.posted() == 3);  // reconnected into fresh descriptors of the same VM
  CHECK(a.w.descriptors() == 2);
  CHECK(h.k->stats().preserved_drained - drained_before == 3);
  h.resume_guests();
  h.wait_received();
  // The same session restarts for real afterwards.
  h.pause_guests();
  auto again = a.s.freeze(tok);
  REQUIRE(again);
  REQUIRE(a.s.hand_over());
  REQUIRE(add_vmm_state(*again, h.vm_state()));
  auto bytes = encode_snapshot(*again);
  REQUIRE(bytes);
  a.proc->exit();
  ctl.wait_all_pending(3);
  reclaim_and_check(h, decoded(*bytes), 6);
}

TEST_CASE("close-first order: call_off that cannot reclaim puts the devices back, reclaim with the snapshot then works") {
  multi_host h;
  vmm_proc a{h, "vmm-a"};
  faulty_syscalls faulty{*a.proc};
  session s{faulty};
  for (auto& d : h.specs()) REQUIRE(s.add_device(d));
  for (auto& r : h.regions()) REQUIRE(s.add_ram(r));
  REQUIRE(s.open(a.w));
  h.start_guests();
  h.pause_guests();
  auto snap = s.freeze(tok);
  REQUIRE(snap);
  REQUIRE(s.hand_over());
  REQUIRE(add_vmm_state(*snap, h.vm_state()));
  faulty.fail(VFIO_DEVICE_SET_IRQS, 2, errc::io);  // device 3
  auto st = s.call_off(a.w);
  REQUIRE(!st);
  CHECK(st.code() == errc::io);
  CHECK(st.err().context().find("0000:00:06.0 (device 3 of 3)") != std::string::npos);
  CHECK(st.err().context().find("put back") != std::string::npos);
  CHECK(s.phase() == session_phase::idle);
  control ctl{*h.k};
  ctl.check_all_ownerless(3);
  auto again = s.reclaim(*snap, a.w);
  INFO(why(again));
  REQUIRE(again);
  CHECK(s.phase() == session_phase::running);
  CHECK(ctl.list().empty());
}
