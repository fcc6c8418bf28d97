#include <doctest/doctest.h>

#include <cstddef>
#include <span>
#include <vector>

#include <keepalive/crc32c.hpp>

using namespace keepalive;

TEST_CASE("crc32c: known value, both paths") {
  const char s[] = "123456789";
  const auto bytes = std::as_bytes(std::span{s, 9});
  CHECK(crc32c(bytes) == 0xE3069283u);
  CHECK(crc32c_extend_table(0, bytes) == 0xE3069283u);
  CHECK(crc32c_extend(crc32c(bytes.first(4)), bytes.subspan(4)) == 0xE3069283u);
}

TEST_CASE("crc32c: the CPU's CRC32 instruction path equals the table, every length and alignment") {
  std::vector<std::byte> buf(300);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>((i * 131 + 7) & 0xff);
  for (std::size_t off = 0; off < 8; ++off)
    for (std::size_t n = 0; off + n <= buf.size(); n += (n < 40 ? 1 : 37)) {
      CAPTURE(off);
      CAPTURE(n);
      const auto span = std::span<const std::byte>{buf}.subspan(off, n);
      CHECK(crc32c_extend(0x12345678u, span) == crc32c_extend_table(0x12345678u, span));
      CHECK(crc32c(span) == crc32c_extend_table(0, span));
    }
}
