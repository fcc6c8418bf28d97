// A writer rewrites one shared IRTE, alternating two entries whose words all differ, while a
// reader (the IOMMU) loads it: the reader must only ever see one of the two whole entries, or
// (with the clear-P protocol) a not-present entry.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <thread>

#include <keepalive/hw/irte.hpp>

using namespace keepalive;
using namespace keepalive::hw;

namespace {

struct observations {
  long a = 0, b = 0, not_present = 0, torn = 0, bad_not_present = 0;
  bool final_is_last_written = false;  // once the writer stops, the reader sees its last entry
};

template <class Store>
observations race(Store store, int rewrites) {
  alignas(16) std::uint64_t slot[2] = {0, 0};
  const irte a = make_posted({.vec = vector{0x41}, .descriptor = hpa{0x1111'2222'3333'4440u}, .sid = 0x0010});
  const irte b = make_remapped(
      {.vec = vector{0x30}, .destination = apic_id{0x5555'6666}, .sid = 0x0234, .svt = source_validation::bus});
  REQUIRE(a.lo() != b.lo());
  REQUIRE(a.hi() != b.hi());
  irte_store(slot, a);

  std::atomic<bool> done{false};
  observations seen;
  std::thread reader([&] {
    // Until the writer is done, and at least 20000 times (the writer may finish before this
    // thread starts on a loaded machine). Under heavy rewriting with the clear-P protocol the
    // reader may see nothing but not-present entries: that is the protocol's IR-fault window.
    for (long n = 0; !done.load(std::memory_order_acquire) || n < 20000; ++n) {
      const irte e = irte_load(slot);
      if (e == a) {
        ++seen.a;
      } else if (e == b) {
        ++seen.b;
      } else if (!e.present()) {
        ++seen.not_present;
        // The half-written states: lo of the new entry without P, hi of either.
        const bool lo_ok = e.lo() == (a.lo() & ~std::uint64_t{1}) || e.lo() == (b.lo() & ~std::uint64_t{1});
        const bool hi_ok = e.hi() == a.hi() || e.hi() == b.hi();
        if (!lo_ok || !hi_ok) ++seen.bad_not_present;
      } else {
        ++seen.torn;
      }
    }
  });
  for (int i = 0; i < rewrites; ++i) store(slot, (i & 1) != 0 ? a : b);
  done.store(true, std::memory_order_release);
  reader.join();
  seen.final_is_last_written = irte_load(slot) == ((rewrites - 1) % 2 != 0 ? a : b);
  return seen;
}

}  // namespace

TEST_CASE("irte_store (clear P, hi, lo) + irte_load: whole entries or not-present, never torn") {
  const observations o = race([](std::uint64_t* s, const irte& e) { irte_store(s, e); }, 400000);
  MESSAGE("A " << o.a << ", B " << o.b << ", not present " << o.not_present);
  CHECK(o.torn == 0);
  CHECK(o.bad_not_present == 0);
  CHECK(o.final_is_last_written);
}

TEST_CASE("irte_store_atomic + irte_load: only whole entries, never even not-present") {
  const observations o = race([](std::uint64_t* s, const irte& e) { irte_store_atomic(s, e); }, 400000);
  MESSAGE("A " << o.a << ", B " << o.b);
  CHECK(o.torn == 0);
  CHECK(o.not_present == 0);
  CHECK(o.final_is_last_written);
}
