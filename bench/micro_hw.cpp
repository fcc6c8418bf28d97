// The hardware formats on the hot paths: posting, draining, IRTE updates, walks.
#include <benchmark/benchmark.h>

#include <memory>

#include "keepalive/hw/irte.hpp"
#include "keepalive/hw/page_table.hpp"
#include "keepalive/hw/phys_memory.hpp"
#include "keepalive/hw/posted_intr.hpp"

using namespace keepalive;
using namespace keepalive::hw;

static void BM_PidPost(benchmark::State& state) {
  auto d = std::make_unique<posted_intr_desc>();
  d->init_nonatomic(vector{0xf2}, 1, false);
  std::uint8_t v = 0x20;
  for (auto _ : state) {
    benchmark::DoNotOptimize(d->post(vector{v}, false));
    v = static_cast<std::uint8_t>(v == 0xef ? 0x20 : v + 1);
    if (v == 0x20) (void)d->drain();
  }
}
BENCHMARK(BM_PidPost);

static void BM_PidDrain(benchmark::State& state) {
  auto d = std::make_unique<posted_intr_desc>();
  d->init_nonatomic(vector{0xf2}, 1, false);
  for (auto _ : state) {
    for (std::uint8_t v = 0x20; v < 0x20 + state.range(0); ++v) (void)d->post(vector{v}, false);
    benchmark::DoNotOptimize(d->drain());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_PidDrain)->Arg(1)->Arg(8)->Arg(64);

static void BM_IrteEncodePosted(benchmark::State& state) {
  std::uint64_t addr = 0x12345640;
  for (auto _ : state) {
    posted_irte_fields f{};
    f.vec = vector{0x40};
    f.descriptor = hpa{addr};
    f.sid = 0x20;
    benchmark::DoNotOptimize(make_posted(f));
    addr += 64;
  }
}
BENCHMARK(BM_IrteEncodePosted);

static void BM_IrteStoreAtomic(benchmark::State& state) {
  alignas(16) std::uint64_t slot[2]{};
  posted_irte_fields f{};
  f.vec = vector{0x40};
  f.descriptor = hpa{0x1000};
  const irte a = make_posted(f);
  f.descriptor = hpa{0x2000};
  const irte b = make_posted(f);
  bool flip = false;
  for (auto _ : state) {
    benchmark::DoNotOptimize(irte_store_atomic(slot, flip ? a : b));
    flip = !flip;
  }
}
BENCHMARK(BM_IrteStoreAtomic);

static void BM_IrteLoad(benchmark::State& state) {
  alignas(16) std::uint64_t slot[2]{};
  irte_store(slot, make_remapped({}));
  for (auto _ : state) benchmark::DoNotOptimize(irte_load(slot));
}
BENCHMARK(BM_IrteLoad);

// A 4-level walk over a table with 4 KiB or 2 MiB leaves.
static void BM_PageWalk(benchmark::State& state) {
  const bool superpages = state.range(0) != 0;
  buffer_phys_memory mem{4096};
  const hpa root = *mem.alloc_page();
  const std::uint64_t size = 64ull << 20;
  (void)map(mem, root, 4, iova{0}, hpa{1ull << 32}, size, perm::read_write, superpages);
  std::uint64_t va = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(translate(mem, root, 4, iova{va}, dma_access::write));
    va = (va + 4096 * 17) % size;
  }
  state.SetLabel(superpages ? "2MiB leaves" : "4KiB leaves");
}
BENCHMARK(BM_PageWalk)->Arg(0)->Arg(1);
