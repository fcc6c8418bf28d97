#include "keepalive/types.hpp"

#include <fmt/format.h>
#include <sys/random.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace keepalive {
namespace {
template <typename T>
bool parse_hex(std::string_view s, T& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  return ec == std::errc{} && p == s.data() + s.size();
}
int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::string bdf::to_string() const {
  return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", segment(), bus(), device(), function());
}

std::optional<bdf> bdf::parse(std::string_view s) {
  std::uint16_t seg = 0;
  if (std::count(s.begin(), s.end(), ':') == 2) {
    auto c = s.find(':');
    if (c != 4 || !parse_hex(s.substr(0, c), seg)) return std::nullopt;
    s.remove_prefix(c + 1);
  }
  // bb:dd.f
  if (s.size() != 7 || s[2] != ':' || s[5] != '.') return std::nullopt;
  std::uint8_t bus = 0, dev = 0, fn = 0;
  if (!parse_hex(s.substr(0, 2), bus) || !parse_hex(s.substr(3, 2), dev) || !parse_hex(s.substr(6, 1), fn))
    return std::nullopt;
  if (dev > 0x1f || fn > 7) return std::nullopt;
  return bdf{seg, bus, dev, fn};
}

std::string token::to_string() const {
  std::string out;
  out.reserve(36);
  for (std::size_t i = 0; i < b_.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out += fmt::format("{:02x}", b_[i]);
  }
  return out;
}

std::optional<token> token::parse(std::string_view s) {
  if (s.size() != 36) return std::nullopt;
  bytes b{};
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return std::nullopt;
      ++i;
      continue;
    }
    const int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    b[n++] = static_cast<std::uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return token{b};
}

token token::generate() {
  bytes b{};
  std::size_t got = 0;
  while (got < b.size()) {
    const ssize_t r = ::getrandom(b.data() + got, b.size() - got, 0);
    if (r < 0) throw std::runtime_error("getrandom failed");
    got += static_cast<std::size_t>(r);
  }
  b[6] = static_cast<std::uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<std::uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return token{b};
}

}  // namespace keepalive
