// The stage-2 handover image: encode, decode (which validates everything).
#include <benchmark/benchmark.h>

#include "handover.hpp"

using namespace keepalive;
using namespace keepalive::handover;

namespace {
image make(std::size_t devices, std::size_t vectors) {
  image img;
  img.iommu = {hpa{0x200000}, 0x400000 | (1u << 11) | 0xf, hpa{0}, 0};
  img.ranges.push_back({hpa{0x200000}, 0x1000});
  img.ranges.push_back({hpa{0x400000}, 0x100000});
  for (std::size_t d = 0; d < devices; ++d) {
    device_rec r;
    r.device = bdf{0, static_cast<std::uint8_t>(d / 28), static_cast<std::uint8_t>(4 + d % 28), 0};
    r.state = 4;
    r.owner = *token::parse("00112233-4455-6677-8899-aabbccddeeff");
    r.did = domain_id{static_cast<std::uint16_t>(2 + d)};
    r.sl_root = hpa{0x600000 + d * 0x1000};
    r.msix_ctrl = 0x8000 | 2047;
    r.irq_mode = 1;
    for (std::size_t v = 0; v < vectors; ++v)
      r.vectors.push_back({msix_index{static_cast<std::uint16_t>(v)}, irte_index{static_cast<std::uint16_t>(1 + v)}, true,
                           vector{static_cast<std::uint8_t>(0x20 + v % 200)}, hpa{0x700000 + 64 * (v % 64)}});
    img.devices.push_back(std::move(r));
  }
  return img;
}
}  // namespace

static void BM_HandoverEncode(benchmark::State& st) {
  const auto img = make(static_cast<std::size_t>(st.range(0)), static_cast<std::size_t>(st.range(1)));
  for (auto _ : st) benchmark::DoNotOptimize(encode(img));
}
BENCHMARK(BM_HandoverEncode)->ArgsProduct({{1, 8, 64}, {1, 64, 2048}})->ArgNames({"devices", "vectors"});

static void BM_HandoverDecode(benchmark::State& st) {
  const auto bytes = encode(make(static_cast<std::size_t>(st.range(0)), static_cast<std::size_t>(st.range(1))));
  for (auto _ : st) {
    auto r = decode(bytes);
    if (!r) return st.SkipWithError("decode refused a valid image");
    benchmark::DoNotOptimize(r);
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes.size()));
}
BENCHMARK(BM_HandoverDecode)->ArgsProduct({{1, 8, 64}, {1, 64, 2048}})->ArgNames({"devices", "vectors"});
