// Strong types for the quantities that must never be mixed up: an IOVA is not a
// GPA is not an HPA; an IRTE index is not a vector; a token is not 16 random bytes.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keepalive {

template <typename Tag, typename Rep>
class strong {
 public:
  using rep = Rep;
  constexpr strong() = default;
  constexpr explicit strong(Rep v) noexcept : v_{v} {}
  [[nodiscard]] constexpr Rep value() const noexcept { return v_; }
  friend constexpr auto operator<=>(const strong&, const strong&) = default;

 private:
  Rep v_{};
};

// Addresses: an offset may be added, but two address kinds never mix.
template <typename Tag>
class address : public strong<Tag, std::uint64_t> {
 public:
  using strong<Tag, std::uint64_t>::strong;
  [[nodiscard]] constexpr address operator+(std::uint64_t off) const noexcept {
    return address{this->value() + off};
  }
  [[nodiscard]] constexpr std::uint64_t operator-(address o) const noexcept {
    return this->value() - o.value();
  }
};

using iova = address<struct iova_tag>;  // device-visible DMA address (IOMMU input)
using gpa = address<struct gpa_tag>;    // guest-physical address
using hpa = address<struct hpa_tag>;    // host-physical address (sim: offset in phys memory)

using irte_index = strong<struct irte_index_tag, std::uint16_t>;  // 0..65535 in the IR table
using vector = strong<struct vector_tag, std::uint8_t>;           // x86 interrupt vector
using apic_id = strong<struct apic_id_tag, std::uint32_t>;        // physical APIC ID (x2APIC width)
using domain_id = strong<struct domain_id_tag, std::uint16_t>;    // VT-d DID
using msix_index = strong<struct msix_index_tag, std::uint16_t>;  // a device's vector index

// PCI segment:bus:device.function; packed as the uapi does: (seg<<16)|(bus<<8)|devfn.
class bdf {
 public:
  constexpr bdf() = default;
  constexpr bdf(std::uint16_t segment, std::uint8_t bus, std::uint8_t device, std::uint8_t function) noexcept
      : packed_{(std::uint32_t{segment} << 16) | (std::uint32_t{bus} << 8) |
                (std::uint32_t{static_cast<std::uint8_t>(device & 0x1f)} << 3) | (function & 7u)} {}
  [[nodiscard]] static constexpr bdf from_packed(std::uint32_t p) noexcept {
    bdf b;
    b.packed_ = p;
    return b;
  }
  [[nodiscard]] constexpr std::uint32_t packed() const noexcept { return packed_; }
  [[nodiscard]] constexpr std::uint16_t segment() const noexcept { return static_cast<std::uint16_t>(packed_ >> 16); }
  [[nodiscard]] constexpr std::uint8_t bus() const noexcept { return static_cast<std::uint8_t>(packed_ >> 8); }
  [[nodiscard]] constexpr std::uint8_t devfn() const noexcept { return static_cast<std::uint8_t>(packed_); }
  [[nodiscard]] constexpr std::uint8_t device() const noexcept { return static_cast<std::uint8_t>(devfn() >> 3); }
  [[nodiscard]] constexpr std::uint8_t function() const noexcept { return static_cast<std::uint8_t>(devfn() & 7); }
  // VT-d source ID (requester ID): bus << 8 | devfn.
  [[nodiscard]] constexpr std::uint16_t source_id() const noexcept { return static_cast<std::uint16_t>(packed_); }
  friend constexpr auto operator<=>(const bdf&, const bdf&) = default;

  // "0000:00:04.0"
  [[nodiscard]] std::string to_string() const;
  // Accepts "ssss:bb:dd.f" and "bb:dd.f" (segment 0).
  [[nodiscard]] static std::optional<bdf> parse(std::string_view s);

 private:
  std::uint32_t packed_{0};
};

// The ownership token: a 16-byte UUID. All-zero is not a valid token.
class token {
 public:
  using bytes = std::array<std::uint8_t, 16>;
  constexpr token() = default;
  constexpr explicit token(const bytes& b) noexcept : b_{b} {}
  [[nodiscard]] constexpr const bytes& raw() const noexcept { return b_; }
  [[nodiscard]] constexpr bool is_nil() const noexcept {
    for (auto x : b_)
      if (x != 0) return false;
    return true;
  }
  friend constexpr bool operator==(const token&, const token&) = default;

  // Canonical 8-4-4-4-12 lower-case hex.
  [[nodiscard]] std::string to_string() const;
  [[nodiscard]] static std::optional<token> parse(std::string_view s);
  // A random version-4 UUID from the kernel's CSPRNG (getrandom).
  [[nodiscard]] static token generate();

 private:
  bytes b_{};
};

}  // namespace keepalive
