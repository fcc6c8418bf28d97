#include <doctest/doctest.h>

#include <array>
#include <cstdint>

#include <keepalive/hw/bits.hpp>

using namespace keepalive::hw;

static_assert(bits(23, 16) == bit_field{0, 16, 8});
static_assert(bits(127, 96) == bit_field{1, 32, 32});
static_assert(bit(64) == bit_field{1, 0, 1});
static_assert(bits(63, 0).mask() == ~std::uint64_t{0});
static_assert(bits(87, 72).first_bit() == 72 && bits(87, 72).last_bit() == 87);

TEST_CASE("bit_field get/set touch only their bits, truncate wide values") {
  std::array<std::uint64_t, 2> w{~std::uint64_t{0}, 0};
  constexpr bit_field f = bits(11, 8);
  CHECK(f.mask() == 0xF00u);
  CHECK(f.get(w) == 0xF);
  f.set(w, 0x15);  // truncated to 0x5
  CHECK(w[0] == 0xFFFF'FFFF'FFFF'F5FFu);
  constexpr bit_field g = bits(79, 64);
  g.set(w, 0xBEEF);
  CHECK(w[1] == 0xBEEFu);
  CHECK(g.get(w) == 0xBEEF);
  CHECK(bits(63, 0).insert(0, 0x1234) == 0x1234u);
}
