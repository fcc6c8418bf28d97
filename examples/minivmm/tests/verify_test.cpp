// The guest's table verifier is exactly ka_nic_payload_byte + ka_nic_checksum.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "guest/verify.h"

namespace {

struct packet {
  std::uint64_t seq;
  std::uint32_t checksum;
  std::vector<std::uint8_t> payload;
};

// What the sim NIC writes (nic.cpp receive_one).
packet make(std::uint64_t seq, std::uint32_t n) {
  packet p{seq, 0, std::vector<std::uint8_t>(n)};
  for (std::uint32_t i = 0; i < n; ++i) p.payload[i] = ka_nic_payload_byte(seq, i);
  p.checksum = ka_nic_checksum(seq, p.payload.data(), n);
  return p;
}

struct tables {
  explicit tables(std::uint32_t len) : n{len}, bytes(mv_tables_bytes(len) / 8) {
    mv_tables_build(reinterpret_cast<std::uint8_t*>(bytes.data()), len);
  }
  bool ok(const packet& p) const {
    return mv_verify_tables(reinterpret_cast<const std::uint8_t*>(bytes.data()), n, p.seq, p.checksum, p.payload.data()) != 0;
  }
  std::uint32_t n;
  std::vector<std::uint64_t> bytes;  // 8-byte aligned
};

std::vector<std::uint64_t> sample_seqs() {
  std::vector<std::uint64_t> s;
  for (std::uint64_t i = 0; i < 600; ++i) s.push_back(i);
  std::mt19937_64 rng{42};
  for (int i = 0; i < 400; ++i) s.push_back(rng());
  for (std::uint64_t hi : {1ull << 32, 0xffffffffull, 0xffffffffffffffffull, 0x9e3779b9ull, 0x123456789abcdefull}) s.push_back(hi);
  return s;
}

}  // namespace

TEST_CASE("table verifier accepts every packet the NIC writes, for every payload length class") {
  for (std::uint32_t n : {8u, 16u, 64u, 1024u}) {
    const tables t{n};
    for (std::uint64_t seq : sample_seqs()) {
      const auto p = make(seq, n);
      CHECK(t.ok(p));
      CHECK(mv_verify_reference(n, p.seq, p.checksum, p.payload.data()) == 1);
    }
  }
}

TEST_CASE("closed-form checksum equals ka_nic_checksum (the seed constant is the NIC's)") {
  const std::uint32_t n = 16;
  const tables t{n};
  for (std::uint64_t seq : sample_seqs()) {
    auto p = make(seq, n);
    p.checksum ^= 1u;  // any other value must be refused
    CHECK_FALSE(t.ok(p));
    CHECK(mv_verify_reference(n, p.seq, p.checksum, p.payload.data()) == 0);
  }
}

TEST_CASE("any corrupted payload byte, checksum bit or sequence number is refused by both verifiers") {
  const std::uint32_t n = 64;
  const tables t{n};
  for (std::uint64_t seq : {std::uint64_t{0}, std::uint64_t{255}, std::uint64_t{256}, std::uint64_t{77777}, std::uint64_t{0xdeadbeef12345678}}) {
    const auto good = make(seq, n);
    for (std::uint32_t i = 0; i < n; ++i)
      for (std::uint8_t flip : {std::uint8_t{1}, std::uint8_t{0x80}}) {
        auto p = good;
        p.payload[i] ^= flip;
        CHECK_FALSE(t.ok(p));
        CHECK(mv_verify_reference(n, p.seq, p.checksum, p.payload.data()) == 0);
      }
    for (unsigned bit = 0; bit < 32; ++bit) {
      auto p = good;
      p.checksum ^= 1u << bit;
      CHECK_FALSE(t.ok(p));
    }
    // A header from another packet (seq rewritten, payload of the original).
    for (std::uint64_t other : {std::uint64_t{seq + 1}, std::uint64_t{seq + 256}, std::uint64_t{seq ^ (1ull << 40)}}) {
      auto p = good;
      p.seq = other;
      CHECK_FALSE(t.ok(p));
      CHECK(mv_verify_reference(n, p.seq, p.checksum, p.payload.data()) == 0);
    }
  }
}

TEST_CASE("table layout: 256 payload rows, then S and T per row") {
  const std::uint32_t n = 16;
  CHECK(mv_tables_bytes(n) == 256u * 16u + 2048u);
  const tables t{n};
  const auto* b = reinterpret_cast<const std::uint8_t*>(t.bytes.data());
  for (std::uint32_t k : {0u, 1u, 200u, 255u})
    for (std::uint32_t i = 0; i < n; ++i) CHECK(b[k * n + i] == ka_nic_payload_byte(k, i));
  // Row 0: bytes 1, 8, 15, ... (7i + 1); S = sum, T = sum of prefix sums.
  std::uint32_t s = 0, tt = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    s += 7 * i + 1;
    tt += s;
  }
  std::uint32_t got_s = 0, got_t = 0;
  std::memcpy(&got_s, b + 256 * n, 4);
  std::memcpy(&got_t, b + 256 * n + 4, 4);
  CHECK(got_s == s);
  CHECK(got_t == tt);
  CHECK(s == 856u);  // 16 + 7 * 120
}
