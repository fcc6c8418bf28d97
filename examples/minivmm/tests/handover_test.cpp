// The VMM-restart state: every field round-trips; anything truncated, corrupt,
// missing, repeated or unknown is refused whole.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstring>
#include <thread>

#include "handover.hpp"

using namespace keepalive;
using namespace keepalive::minivmm;

namespace {

const token tok = *token::parse("5b1c7a6e-2f0d-4e11-9a3c-0d5e6f708192");

template <typename T>
void fill(T& v, std::uint8_t seed) {
  auto* p = reinterpret_cast<std::uint8_t*>(&v);
  for (std::size_t i = 0; i < sizeof v; ++i) p[i] = static_cast<std::uint8_t>(seed + i * 13);
}
template <typename T>
bool same(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

vmm_state sample() {
  vmm_state s;
  s.ram_phys_offset = 64ull << 20;
  s.tsc_khz = 2596126;
  s.guest.ram_bytes = 32ull << 20;
  s.guest.bar0_gpa = 0xd0000000;
  s.guest.ring_entries = 1024;
  s.guest.buffer_bytes = 96;
  s.guest.payload_bytes = 64;
  s.guest.irq_mod_pkts = 7;
  s.guest.irq_mod_usec = 333;
  s.guest.verify = MINIVMM_VERIFY_REFERENCE;
  for (std::uint8_t k = 0; k < 2; ++k) {
    vcpu_state v;
    fill(v.regs, static_cast<std::uint8_t>(1 + k));
    fill(v.sregs, static_cast<std::uint8_t>(2 + k));
    fill(v.xsave, static_cast<std::uint8_t>(3 + k));
    fill(v.xcrs, static_cast<std::uint8_t>(4 + k));
    fill(v.lapic, static_cast<std::uint8_t>(5 + k));
    fill(v.events, static_cast<std::uint8_t>(6 + k));
    fill(v.mp_state, static_cast<std::uint8_t>(7 + k));
    fill(v.debugregs, static_cast<std::uint8_t>(8 + k));
    v.msrs = {{0xc0000082, 0x1122334455667788ull + k}, {0x277, 0x0007040600070406ull}, {0x3b, 0}};
    v.tsc_offset = 0xfffffff012345678ull - k;
    s.vcpus.push_back(v);
  }
  for (auto& c : s.irqchip.chips) fill(c, 9);
  device_record d;
  d.device = bdf{0, 0, 4, 0};
  d.route.msix_index = 0;
  d.route.guest_vector = vector{0x40};
  d.route.guest_apic = apic_id{0};
  d.route.gsi = 24;
  d.owner = tok;
  s.devices.push_back(d);
  d.device = bdf{1, 2, 5, 1};
  d.route.msix_index = 3;
  d.route.guest_vector = vector{0x51};
  d.route.guest_apic = apic_id{7};
  d.route.gsi = 31;
  s.devices.push_back(d);
  s.pause_started_ns = 123456789012345ull;
  return s;
}

// FNV-1a 64 as the image uses it (test vectors: "" and "a").
std::uint64_t fnv(const std::byte* p, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<std::uint8_t>(p[i]);
    h *= 0x100000001b3ull;
  }
  return h;
}
void reseal(std::vector<std::byte>& img) {
  const std::uint64_t sum = fnv(img.data() + 32, img.size() - 32);
  std::memcpy(img.data() + 24, &sum, 8);
}

}  // namespace

TEST_CASE("FNV-1a reference values") {
  CHECK(fnv(nullptr, 0) == 0xcbf29ce484222325ull);
  const std::byte a{'a'};
  CHECK(fnv(&a, 1) == 0xaf63dc4c8601ec8cull);
}

TEST_CASE("every field of the state round-trips") {
  const auto s = sample();
  const auto img = encode(s);
  auto d = decode(img);
  REQUIRE(d);
  CHECK(d->ram_phys_offset == s.ram_phys_offset);
  CHECK(d->tsc_khz == s.tsc_khz);
  CHECK(d->guest.ram_bytes == s.guest.ram_bytes);
  CHECK(d->guest.bar0_gpa == s.guest.bar0_gpa);
  CHECK(d->guest.ring_entries == s.guest.ring_entries);
  CHECK(d->guest.buffer_bytes == s.guest.buffer_bytes);
  CHECK(d->guest.payload_bytes == s.guest.payload_bytes);
  CHECK(d->guest.irq_mod_pkts == s.guest.irq_mod_pkts);
  CHECK(d->guest.irq_mod_usec == s.guest.irq_mod_usec);
  CHECK(d->guest.verify == s.guest.verify);
  REQUIRE(d->vcpus.size() == 2);
  for (std::size_t k = 0; k < 2; ++k) {
    const auto& a = d->vcpus[k];
    const auto& b = s.vcpus[k];
    CHECK(same(a.regs, b.regs));
    CHECK(same(a.sregs, b.sregs));
    CHECK(a.xsave == b.xsave);
    CHECK(same(a.xcrs, b.xcrs));
    CHECK(same(a.lapic, b.lapic));
    CHECK(same(a.events, b.events));
    CHECK(same(a.mp_state, b.mp_state));
    CHECK(same(a.debugregs, b.debugregs));
    CHECK(a.tsc_offset == b.tsc_offset);
    REQUIRE(a.msrs.size() == b.msrs.size());
    for (std::size_t i = 0; i < a.msrs.size(); ++i) {
      CHECK(a.msrs[i].index == b.msrs[i].index);
      CHECK(a.msrs[i].value == b.msrs[i].value);
    }
  }
  for (std::size_t i = 0; i < 3; ++i) CHECK(same(d->irqchip.chips[i], s.irqchip.chips[i]));
  REQUIRE(d->devices.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(d->devices[i].device == s.devices[i].device);
    CHECK(d->devices[i].route.msix_index == s.devices[i].route.msix_index);
    CHECK(d->devices[i].route.guest_vector == s.devices[i].route.guest_vector);
    CHECK(d->devices[i].route.guest_apic == s.devices[i].route.guest_apic);
    CHECK(d->devices[i].route.gsi == s.devices[i].route.gsi);
    CHECK(d->devices[i].owner == s.devices[i].owner);
  }
  CHECK(d->pause_started_ns == s.pause_started_ns);
  CHECK(encode(*d) == img);
}

TEST_CASE("header: magic, version, length and checksum") {
  const auto img = encode(sample());
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint64_t payload = 0;
  std::memcpy(&magic, img.data(), 8);
  std::memcpy(&version, img.data() + 8, 4);
  std::memcpy(&payload, img.data() + 16, 8);
  CHECK(magic == state_magic);
  CHECK(version == state_version);
  CHECK(payload == img.size() - 32);
  auto v = img;
  v[8] = std::byte{2};
  CHECK(decode(v).code() == errc::protocol);
  v = img;
  v[0] ^= std::byte{1};
  CHECK(decode(v).code() == errc::protocol);
}

TEST_CASE("any flipped byte or truncation is refused") {
  const auto img = encode(sample());
  for (std::size_t i = 0; i < img.size(); i += 97) {
    auto v = img;
    v[i] ^= std::byte{0x20};
    CHECK(decode(v).code() == errc::protocol);
  }
  for (std::size_t n = 0; n < img.size(); n += 211) CHECK(decode(std::span{img}.first(n)).code() == errc::protocol);
  auto longer = img;
  longer.push_back(std::byte{0});
  CHECK(decode(longer).code() == errc::protocol);
}

TEST_CASE("well-sealed but wrong content is refused: unknown record, missing vCPU, nil token, bad config") {
  auto img = encode(sample());
  // First record (memory) at offset 32: rename its tag to an unknown one.
  const std::uint32_t unknown = 99;
  std::memcpy(img.data() + 32, &unknown, 4);
  reseal(img);
  CHECK(decode(img).code() == errc::protocol);

  auto s = sample();
  s.vcpus.clear();
  CHECK(decode(encode(s)).code() == errc::protocol);

  s = sample();
  s.devices[1].owner = token{};
  CHECK(decode(encode(s)).code() == errc::protocol);

  s = sample();
  s.guest.ring_entries = 1000;  // not a power of two
  CHECK(decode(encode(s)).code() == errc::protocol);

  // The same record twice (memory record duplicated by rewriting the guest record's tag).
  img = encode(sample());
  std::uint32_t len = 0;
  std::memcpy(&len, img.data() + 36, 4);
  const std::uint32_t memory_tag = 1;
  std::memcpy(img.data() + 32 + 8 + len, &memory_tag, 4);
  reseal(img);
  CHECK(decode(img).code() == errc::protocol);
}

TEST_CASE("write_state / read_state through a pipe") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const auto s = sample();
  std::thread writer{[&] {
    CHECK(write_state(fds[1], s));
    ::close(fds[1]);
  }};
  auto got = read_state(fds[0]);
  writer.join();
  ::close(fds[0]);
  REQUIRE(got);
  CHECK(encode(*got) == encode(s));
}
