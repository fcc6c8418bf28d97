// Patch 0009's posted-interrupt moves (kernel/linux/kvm/keepalive_pi.h), built in user space
// and checked against the library's model of VT-d posting (hw::posted_intr_desc::post) and
// against what the sim kernel does when a preserved vector reconnects.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "kernel_shim.hpp"

namespace {
using namespace keepalive;
using keepalive::kvm_pi::as_kernel;
using keepalive::kvm_pi::keepalive_pi_drained;

hw::vector_set words_of(const unsigned long (&pir)[4]) { return hw::vector_set::from_words({pir[0], pir[1], pir[2], pir[3]}); }

hw::vector_set random_set(std::mt19937_64& rng) {
  // Empty, sparse, dense and full sets, so every word position and edge is hit.
  const auto density = rng() % 4;
  hw::vector_set s;
  for (unsigned v = 0; v < 256; ++v) {
    const bool on = density == 0 ? false : density == 1 ? rng() % 64 == 0 : density == 2 ? rng() % 2 == 0 : true;
    if (on) s.set(vector{static_cast<std::uint8_t>(v)});
  }
  return s;
}

hw::posted_intr_desc vcpu_desc(vector nv, std::uint32_t ndst, bool on, bool sn, const hw::vector_set& pir) {
  hw::posted_intr_desc d;
  d.init_nonatomic(nv, ndst, sn);
  d.set_on_nonatomic(on);
  d.set_pir_nonatomic(pir);
  return d;
}

constexpr vector posted_intr_vector{0xf2};  // Linux POSTED_INTR_VECTOR
constexpr vector wakeup_vector{0xf1};       // Linux POSTED_INTR_WAKEUP_VECTOR
}  // namespace

TEST_CASE("init_kept: PIR empty, ON clear, SN set, NV and NDST of the vCPU descriptor kept") {
  const std::uint32_t ndst = hw::encode_destination(apic_id{3}, hw::apic_mode::xapic);
  CHECK(ndst == 0x0300u);
  hw::posted_intr_desc from = vcpu_desc(posted_intr_vector, ndst, true, false, hw::vector_set{});
  hw::posted_intr_desc kept = vcpu_desc(vector{0x11}, 0xdeadu, true, false, hw::vector_set::from_words({~0UL, 1, 2, 3}));
  kvm_pi::keepalive_pi_init_kept(as_kernel(kept), as_kernel(from));
  const auto c = kept.control_nonatomic();
  CHECK(!c.on());
  CHECK(c.sn());
  CHECK(c.nv() == posted_intr_vector);
  CHECK(c.ndst() == ndst);
  CHECK(c.destination(hw::apic_mode::xapic) == apic_id{3});
  CHECK(!c.reserved_bits_set());
  CHECK(kept.pir_nonatomic().empty());
  // Known raw value: SN (bit 1), NV 0xf2 at bits 23:16, NDST 0x0300 at bits 63:32.
  CHECK(c.raw() == 0x0000030000f20002ULL);
  CHECK(from.control_nonatomic().raw() == 0x0000030000f20001ULL);  // the source is not touched
}

TEST_CASE("interrupts posted into the kept descriptor are recorded and notify nobody") {
  hw::posted_intr_desc from = vcpu_desc(posted_intr_vector, 7, false, false, hw::vector_set{});
  hw::posted_intr_desc kept;
  kvm_pi::keepalive_pi_init_kept(as_kernel(kept), as_kernel(from));
  for (unsigned v = 0; v < 256; ++v) {
    const auto r = kept.post(vector{static_cast<std::uint8_t>(v)}, false);  // the kept IRTE is not urgent
    CHECK(!r.notify);
    CHECK(!r.pir_was_set_already);
  }
  CHECK(kept.pending().count() == 256);
  CHECK(!kept.control().on());
  // Only SN suppresses: an urgent IRTE would notify, and so would the same post with SN clear.
  hw::posted_intr_desc probe = kept;
  CHECK(probe.post(vector{9}, true).notify);
  hw::posted_intr_desc plain = vcpu_desc(posted_intr_vector, 7, false, false, hw::vector_set{});
  CHECK(plain.post(vector{9}, false).notify);
}

TEST_CASE("park_vector copies one vector's pending bit and leaves the vCPU descriptor alone") {
  std::mt19937_64 rng{1};
  for (int round = 0; round < 200; ++round) {
    const hw::vector_set vcpu_pir = random_set(rng);
    const hw::vector_set kept_pir = random_set(rng);
    hw::posted_intr_desc from = vcpu_desc(posted_intr_vector, 1, round % 2 == 0, false, vcpu_pir);
    hw::posted_intr_desc kept = vcpu_desc(posted_intr_vector, 1, false, true, kept_pir);
    const vector v{static_cast<std::uint8_t>(rng() % 256)};
    const bool moved = kvm_pi::keepalive_pi_park_vector(as_kernel(kept), as_kernel(from), v.value());
    CHECK(moved == vcpu_pir.test(v));
    hw::vector_set want = kept_pir;
    if (vcpu_pir.test(v)) want.set(v);
    CHECK(kept.pir_nonatomic() == want);
    CHECK(from.pir_nonatomic() == vcpu_pir);
    CHECK(!kept.control_nonatomic().on());
  }
  hw::posted_intr_desc from = vcpu_desc(posted_intr_vector, 1, false, false, hw::vector_set::from_words({~0UL, ~0UL, ~0UL, ~0UL}));
  hw::posted_intr_desc kept;
  CHECK(!kvm_pi::keepalive_pi_park_vector(as_kernel(kept), as_kernel(from), 256));
  CHECK(kept.pir_nonatomic().empty());
}

TEST_CASE("take: clears ON, then takes every PIR word; retag moves one bit") {
  std::mt19937_64 rng{2};
  for (int round = 0; round < 200; ++round) {
    const hw::vector_set pir = random_set(rng);
    hw::posted_intr_desc kept = vcpu_desc(posted_intr_vector, 5, round % 2 == 0, true, pir);
    unsigned long out[4] = {1, 2, 3, 4};
    CHECK(kvm_pi::keepalive_pi_take(as_kernel(kept), out) == !pir.empty());
    CHECK(words_of(out) == pir);
    CHECK(kept.pir_nonatomic().empty());
    CHECK(!kept.control_nonatomic().on());
    CHECK(kept.control_nonatomic().sn());
    CHECK(kept.control_nonatomic().nv() == posted_intr_vector);
  }
  hw::posted_intr_desc kept;
  kept.set_pir_nonatomic(hw::vector_set::from_words({1UL << 40, 0, 0, 0}));
  CHECK(kvm_pi::keepalive_pi_retag(as_kernel(kept), 40, 200));
  CHECK(kept.pir_nonatomic() == hw::vector_set::from_words({0, 0, 0, 1UL << 8}));
  CHECK(!kvm_pi::keepalive_pi_retag(as_kernel(kept), 40, 41));  // not pending
  CHECK(!kvm_pi::keepalive_pi_retag(as_kernel(kept), 200, 200));
  CHECK(!kvm_pi::keepalive_pi_retag(as_kernel(kept), 200, 256));
  CHECK(kept.pir_nonatomic() == hw::vector_set::from_words({0, 0, 0, 1UL << 8}));
}

TEST_CASE("drain == posting each kept vector into the target the way VT-d does (random states)") {
  std::mt19937_64 rng{3};
  for (int round = 0; round < 2000; ++round) {
    const hw::vector_set kept_pir = random_set(rng);
    const hw::vector_set target_pir = random_set(rng);
    const bool on = rng() % 2 == 0;
    const bool sn = rng() % 3 == 0;
    const vector nv = rng() % 2 ? posted_intr_vector : wakeup_vector;
    const auto ndst = static_cast<std::uint32_t>(rng());

    hw::posted_intr_desc kept = vcpu_desc(posted_intr_vector, 0, false, true, kept_pir);
    hw::posted_intr_desc target = vcpu_desc(nv, ndst, on, sn, target_pir);
    keepalive_pi_drained out{};
    const bool moved = kvm_pi::keepalive_pi_drain(as_kernel(kept), as_kernel(target), &out);

    // Reference: the library's model of the IOMMU, one post per vector.
    hw::posted_intr_desc ref_kept = vcpu_desc(posted_intr_vector, 0, false, true, kept_pir);
    hw::posted_intr_desc ref_target = vcpu_desc(nv, ndst, on, sn, target_pir);
    bool ref_notify = false;
    for (vector v : ref_kept.drain()) ref_notify = ref_target.post(v, false).notify || ref_notify;

    CHECK(moved == !kept_pir.empty());
    CHECK(words_of(out.pir) == kept_pir);
    CHECK(out.notify == ref_notify);
    CHECK(out.notify == (!kept_pir.empty() && !on && !sn));
    CHECK(target.pir_nonatomic() == (target_pir | kept_pir));
    CHECK(target.control_nonatomic() == ref_target.control_nonatomic());
    CHECK(kept.pir_nonatomic().empty());
    CHECK(kept.control_nonatomic() == ref_kept.control_nonatomic());
  }
}

TEST_CASE("drain into a descriptor with SN set: no notification; the vCPU load finds the vectors") {
  hw::posted_intr_desc kept = vcpu_desc(posted_intr_vector, 0, false, true, hw::vector_set::from_words({0, 1UL << 3, 0, 0}));
  hw::posted_intr_desc target = vcpu_desc(posted_intr_vector, 2, false, true, hw::vector_set{});
  keepalive_pi_drained out{};
  CHECK(kvm_pi::keepalive_pi_drain(as_kernel(kept), as_kernel(target), &out));
  CHECK(!out.notify);
  CHECK(!target.control().on());
  CHECK(target.clear_sn_and_check());  // vmx_vcpu_pi_load(): SN cleared, PIR not empty -> ON
  CHECK(target.control().on());
  CHECK(target.drain() == hw::vector_set::from_words({0, 1UL << 3, 0, 0}));

  // An empty kept descriptor moves nothing and never notifies.
  hw::posted_intr_desc empty_kept = vcpu_desc(posted_intr_vector, 0, false, true, hw::vector_set{});
  hw::posted_intr_desc idle = vcpu_desc(posted_intr_vector, 2, false, false, hw::vector_set{});
  CHECK(!kvm_pi::keepalive_pi_drain(as_kernel(empty_kept), as_kernel(idle), &out));
  CHECK(!out.notify);
  CHECK(idle.control_nonatomic().raw() == vcpu_desc(posted_intr_vector, 2, false, false, hw::vector_set{}).control_nonatomic().raw());
}

TEST_CASE("the sim kernel's reconnect (take the preserved bit, post the guest vector) == retag + drain") {
  // kernel_core::bypass() for a preserved vector: take_pir_bit(old, old_bit), then
  // desc(target).post(gv, false), notify -> deliver. Patch 0009: retag(old_bit -> gv), drain.
  std::mt19937_64 rng{4};
  for (int round = 0; round < 2000; ++round) {
    const vector old_bit{static_cast<std::uint8_t>(rng() % 256)};
    const vector gv{static_cast<std::uint8_t>(rng() % 2 ? old_bit.value() : rng() % 256)};
    const bool pending = rng() % 4 != 0;
    const hw::vector_set target_pir = random_set(rng);
    const bool on = rng() % 2 == 0;
    const bool sn = rng() % 3 == 0;
    hw::vector_set kept_pir;
    if (pending) kept_pir.set(old_bit);

    // The sim: the kept descriptor is where the device posted with SN set.
    hw::posted_intr_desc sim_kept = vcpu_desc(posted_intr_vector, 0, false, true, hw::vector_set{});
    if (pending) CHECK(!sim_kept.post(old_bit, false).notify);
    hw::posted_intr_desc sim_target = vcpu_desc(posted_intr_vector, 4, on, sn, target_pir);
    bool sim_notify = false;
    {
      std::atomic_ref<std::uint64_t> w{as_kernel(sim_kept)->pir[old_bit.value() / 64]};
      const std::uint64_t bit = std::uint64_t{1} << (old_bit.value() % 64);
      if ((w.fetch_and(~bit) & bit) != 0) sim_notify = sim_target.post(gv, false).notify;
    }

    hw::posted_intr_desc kept = vcpu_desc(posted_intr_vector, 0, false, true, hw::vector_set{});
    if (pending) CHECK(!kept.post(old_bit, false).notify);
    hw::posted_intr_desc target = vcpu_desc(posted_intr_vector, 4, on, sn, target_pir);
    kvm_pi::keepalive_pi_retag(as_kernel(kept), old_bit.value(), gv.value());
    keepalive_pi_drained out{};
    CHECK(kvm_pi::keepalive_pi_drain(as_kernel(kept), as_kernel(target), &out) == pending);

    CHECK(out.notify == sim_notify);
    CHECK(target.pir_nonatomic() == sim_target.pir_nonatomic());
    CHECK(target.control_nonatomic() == sim_target.control_nonatomic());
    CHECK(kept.pir_nonatomic() == sim_kept.pir_nonatomic());
    CHECK(kept.pir_nonatomic().empty());
  }
}

TEST_CASE("posts racing with drains: every vector arrives exactly once, none stranded without ON") {
  // Poster A posts into the kept descriptor (an IRTE still pointing at it), poster B into the
  // target (the new IRTE), a drainer moves kept -> target, and the "vCPU" takes the target's
  // PIR only when notified (ON set by a post or by the drain), as vmx_sync_pir_to_irr() would.
  // Each round posts every vector once and starts when all 256 of the previous round have
  // arrived: a lost vector or a missing notification stalls the rounds, a duplicate is
  // counted.
  hw::posted_intr_desc kept = vcpu_desc(posted_intr_vector, 0, false, true, hw::vector_set{});
  hw::posted_intr_desc target = vcpu_desc(posted_intr_vector, 1, false, false, hw::vector_set{});
  constexpr int rounds = 300;
  std::atomic<int> round_done{-1};
  std::atomic<bool> stop{false};
  std::atomic<unsigned> notifications{0};
  std::atomic<unsigned> duplicates{0};
  std::array<std::atomic<int>, 256> arrived_in{};
  for (auto& a : arrived_in) a = -1;

  // Even rounds: A posts 0-127 into the kept descriptor, B 128-255 into the target. Odd
  // rounds: A posts all 256 into the kept descriptor, so only the drain can notify.
  auto post_rounds = [&](bool into_kept, std::uint64_t seed) {
    std::mt19937_64 rng{seed};
    std::vector<unsigned> order;
    for (int r = 0; r < rounds; ++r) {
      while (round_done.load() < r - 1) {
        if (stop.load()) return;
        std::this_thread::yield();
      }
      const bool odd = r % 2 != 0;
      const unsigned first = into_kept ? 0 : (odd ? 256 : 128);
      const unsigned last = into_kept ? (odd ? 256 : 128) : 256;
      order.clear();
      for (unsigned v = first; v < last; ++v) order.push_back(v);
      std::shuffle(order.begin(), order.end(), rng);
      for (unsigned v : order) {
        const auto res = (into_kept ? kept : target).post(vector{static_cast<std::uint8_t>(v)}, false);
        if (res.notify) notifications.fetch_add(1);
      }
    }
  };
  std::thread poster_a{[&] { post_rounds(true, 11); }};
  std::thread poster_b{[&] { post_rounds(false, 12); }};
  std::thread drainer{[&] {
    keepalive_pi_drained out{};
    while (!stop.load()) {
      if (kvm_pi::keepalive_pi_drain(as_kernel(kept), as_kernel(target), &out) && out.notify) notifications.fetch_add(1);
      std::this_thread::yield();
    }
  }};
  std::thread vcpu{[&] {
    unsigned seen = 0;
    unsigned handled = 0;
    int r = 0;
    while (r < rounds && !stop.load()) {
      if (notifications.load() == handled) {
        std::this_thread::yield();
        continue;
      }
      handled = notifications.load();
      for (vector v : target.drain()) {
        if (arrived_in[v.value()].exchange(r) == r) duplicates.fetch_add(1);
        if (++seen == 256) {
          seen = 0;
          round_done.store(r++);
        }
      }
    }
  }};
  // Watchdog: give up after 10 s without a completed round.
  int last = -1;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (round_done.load() < rounds - 1 && std::chrono::steady_clock::now() < deadline) {
    if (round_done.load() != last) {
      last = round_done.load();
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int completed = round_done.load() + 1;
  stop.store(true);
  poster_a.join();
  poster_b.join();
  drainer.join();
  vcpu.join();
  CHECK(completed == rounds);
  CHECK(duplicates.load() == 0);
  CHECK(kept.pending().empty());
  CHECK(target.pending().empty());
  CHECK(kept.control().sn());
  CHECK(!kept.control().on());
}
