// Field descriptors over little-endian 64-bit words. Bit n of an entry is bit n % 64 of word
// n / 64 (the VT-d convention: bit 64 is bit 0 of the second word). Entries stay raw words;
// a bit_field only says where a field sits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace keepalive::hw {

struct bit_field {
  unsigned word{0};   // index of the 64-bit word
  unsigned lsb{0};    // lowest bit within that word
  unsigned width{1};  // bits

  [[nodiscard]] constexpr std::uint64_t max() const noexcept {
    return width >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << width) - 1;
  }
  [[nodiscard]] constexpr std::uint64_t mask() const noexcept { return max() << lsb; }
  [[nodiscard]] constexpr unsigned first_bit() const noexcept { return word * 64 + lsb; }
  [[nodiscard]] constexpr unsigned last_bit() const noexcept { return first_bit() + width - 1; }

  [[nodiscard]] constexpr std::uint64_t extract(std::uint64_t w) const noexcept { return (w >> lsb) & max(); }
  // Values wider than the field are truncated to it.
  [[nodiscard]] constexpr std::uint64_t insert(std::uint64_t w, std::uint64_t v) const noexcept {
    return (w & ~mask()) | ((v & max()) << lsb);
  }
  template <std::size_t N>
  [[nodiscard]] constexpr std::uint64_t get(const std::array<std::uint64_t, N>& w) const noexcept {
    return extract(w[word]);
  }
  template <std::size_t N>
  constexpr void set(std::array<std::uint64_t, N>& w, std::uint64_t v) const noexcept {
    w[word] = insert(w[word], v);
  }
  friend constexpr bool operator==(const bit_field&, const bit_field&) = default;
};

namespace detail {
void bit_field_crosses_a_word_boundary();  // never defined: reached only by a bad constant
}

// Absolute bits hi:lo of an entry; a field never straddles two words.
[[nodiscard]] consteval bit_field bits(unsigned hi, unsigned lo) {
  if (hi < lo || hi / 64 != lo / 64) detail::bit_field_crosses_a_word_boundary();
  return bit_field{lo / 64, lo % 64, hi - lo + 1};
}
[[nodiscard]] consteval bit_field bit(unsigned n) { return bits(n, n); }

}  // namespace keepalive::hw
