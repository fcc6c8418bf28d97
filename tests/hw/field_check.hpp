// Round-trip checker for one field of a raw-word entry.
#pragma once

#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <random>

namespace hwtest {

template <std::size_t N>
using words = std::array<std::uint64_t, N>;

template <std::size_t N>
constexpr words<N> invert(words<N> w) {
  for (auto& x : w) x = ~x;
  return w;
}

// Proves that a setter/getter pair owns exactly the bits of `mask` (hand-written in the test):
//  - on all-zero words the field reads `zero`; set(max) yields exactly `mask`;
//  - on all-one words the field reads `max`; set(zero) yields exactly ~mask;
//  - on random words, set(v) for each sample leaves every bit outside mask alone and reads v.
// from(words) builds an entry, to(entry) returns its words.
template <std::size_t N, class From, class To, class Set, class Get, class V>
void check_field(const words<N>& mask, From from, To to, Set set, Get get, V max, V zero,
                 std::initializer_list<V> samples) {
  const words<N> zeros{};
  const words<N> ones = invert(zeros);
  {
    auto e = from(zeros);
    CHECK(get(e) == zero);
    set(e, max);
    CHECK(to(e) == mask);
    CHECK(get(e) == max);
  }
  {
    auto e = from(ones);
    CHECK(get(e) == max);
    set(e, zero);
    CHECK(to(e) == invert(mask));
    CHECK(get(e) == zero);
  }
  std::mt19937_64 rng{0x6b656570616c6976u};
  bool others_untouched = true;
  bool reads_back = true;
  for (int round = 0; round < 64; ++round) {
    words<N> bg;
    for (auto& x : bg) x = rng();
    for (const V& v : samples) {
      auto e = from(bg);
      set(e, v);
      const words<N> w = to(e);
      for (std::size_t i = 0; i < N; ++i)
        others_untouched = others_untouched && (w[i] & ~mask[i]) == (bg[i] & ~mask[i]);
      reads_back = reads_back && get(e) == v;
    }
  }
  CHECK(others_untouched);
  CHECK(reads_back);
}

}  // namespace hwtest
