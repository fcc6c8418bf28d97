// The snapshot format: known bytes, round trip of every field, and a decoder
// that refuses every corruption with errc::protocol and the reason.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "handover.hpp"
#include "keepalive/crc32c.hpp"
#include "keepalive/snapshot.hpp"

using namespace keepalive;

namespace {

std::vector<std::byte> bytes_of(std::string_view s) {
  std::vector<std::byte> out;
  for (char c : s) out.push_back(static_cast<std::byte>(c));
  return out;
}

snapshot sample() {
  snapshot s;
  s.owner = *token::parse("00112233-4455-4677-8899-aabbccddeeff");
  s.nr_vcpus = 3;
  s.devices = {
      {bdf{0, 0x3b, 0, 0}, 42, abi::irq_mode::posted,
       {{msix_index{0}, vector{0x41}, 2}, {msix_index{1}, vector{0x42}, 0}, {msix_index{7}, vector{0xef}, 1}}},
      {bdf{1, 0x5e, 2, 3}, 7, abi::irq_mode::masked, {{msix_index{2047}, vector{0x10}, 0}}},
      {bdf{0, 0, 4, 0}, 32, abi::irq_mode::none, {}},
  };
  s.ram = {{gpa{0}, iova{0}, 0x80000000, 0x7f0000000000, "/dev/shm/vm-ram", 0},
           {gpa{0x100000000}, iova{0x80000000}, 0x40000000, 0x7f0080000000, "memfd:ram-hi", 0x80000000},
           {gpa{0xfee00000}, iova{0xfee00000}, 0x1000, 0x1000, "", 0}};
  s.vcpu_state = {{0, vcpu_state_tag::regs, bytes_of("0123456789abcdef")},
                  {2, vcpu_state_tag::lapic, bytes_of("lapic")},
                  {1, vcpu_state_tag::msrs, {}},
                  {0, static_cast<vcpu_state_tag>(0x10003), bytes_of("vmm-private-13b")}};
  s.extra = bytes_of("virtio-net queues");
  return s;
}

std::vector<std::byte> encoded(const snapshot& s) {
  auto b = encode_snapshot(s);
  REQUIRE(b);
  return std::move(*b);
}

std::uint64_t le(const std::vector<std::byte>& b, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(b[at + i])} << (8 * i);
  return v;
}
void put_le(std::vector<std::byte>& b, std::size_t at, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b[at + i] = std::byte{static_cast<std::uint8_t>(v >> (8 * i))};
}
// After an edit: correct total length and checksum, so only the edit is wrong.
void reseal(std::vector<std::byte>& b) {
  put_le(b, 8, b.size(), 8);
  put_le(b, 4, 0, 4);
  put_le(b, 4, crc32c(b), 4);
}
std::string refusal(const std::vector<std::byte>& b) {
  auto r = decode_snapshot(b);
  REQUIRE(!r);
  CHECK(r.code() == errc::protocol);
  return r.err().message();
}

// Offsets in sample(): header 96; device 0 at 96 (+16 +3*8), device 1 at 136
// (+16 +8), device 2 at 160 (+16); RAM region 0 at 176.
constexpr std::size_t dev0 = 96, dev1 = 136, dev2 = 160, ram0 = 176;

}  // namespace

TEST_CASE("crc32c: the Castagnoli check value, and the handover codec uses the same function") {
  const auto digits = bytes_of("123456789");
  CHECK(crc32c(digits) == 0xE3069283u);
  CHECK(crc32c({}) == 0u);
  CHECK(crc32c_extend(crc32c(std::span{digits}.first(4)), std::span{digits}.subspan(4)) == 0xE3069283u);
  CHECK(handover::crc32c(digits) == 0xE3069283u);
}

TEST_CASE("snapshot: known bytes of the header and records") {
  const auto s = sample();
  const auto b = encoded(s);
  CHECK(le(b, 0, 4) == 0x4e53414b);
  CHECK(std::memcmp(b.data(), "KASN", 4) == 0);
  CHECK(le(b, 8, 8) == b.size());
  CHECK(std::memcmp(b.data() + 16, "keepalive-snapshot-v1\0\0\0\0\0\0\0\0\0\0", 32) == 0);
  CHECK(std::memcmp(b.data() + 48, s.owner.raw().data(), 16) == 0);
  CHECK(le(b, 64, 4) == 3);  // vcpus
  CHECK(le(b, 68, 4) == 3);  // devices
  CHECK(le(b, 72, 4) == 3);  // RAM regions
  CHECK(le(b, 76, 4) == 4);  // blobs
  CHECK(le(b, 80, 8) == 17);  // extra bytes
  CHECK(le(b, 88, 8) == 0);
  CHECK(le(b, dev0, 4) == 0x3b00);
  CHECK(le(b, dev0 + 4, 4) == 42);
  CHECK(le(b, dev0 + 8, 2) == 3);
  CHECK(le(b, dev0 + 10, 1) == 1);  // VFIO_KEEPALIVE_IRQ_POSTED
  CHECK(le(b, dev0 + 16 + 16, 2) == 7);  // third vector: msix 7 -> 0xef on vcpu 1
  CHECK(le(b, dev0 + 16 + 18, 1) == 0xef);
  CHECK(le(b, dev0 + 16 + 20, 4) == 1);
  CHECK(le(b, dev1, 4) == 0x15e13);  // 0001:5e:02.3
  CHECK(le(b, dev1 + 16, 2) == 2047);
  CHECK(le(b, dev2 + 8, 2) == 0);
  CHECK(le(b, ram0 + 24, 8) == 0x7f0000000000);
  CHECK(le(b, ram0 + 40, 4) == 15);  // "/dev/shm/vm-ram"
  CHECK(std::memcmp(b.data() + ram0 + 48, "/dev/shm/vm-ram\0", 16) == 0);  // one byte of padding
  // Whole length: header, devices, RAM (48 + name padded), blobs (16 + data padded), extra padded.
  const std::size_t expect = 96 + (16 + 24) + (16 + 8) + 16 + (48 + 16) + (48 + 16) + 48 + (16 + 16) + (16 + 8) + 16 +
                             (16 + 16) + 24;
  CHECK(b.size() == expect);
  CHECK(b.size() % 8 == 0);
}

TEST_CASE("snapshot: every field round-trips") {
  const auto s = sample();
  auto d = decode_snapshot(encoded(s));
  REQUIRE(d);
  CHECK(*d == s);
  CHECK(d->devices[1].address.segment() == 1);
  CHECK(d->devices[1].vectors[0].msix == msix_index{2047});
  CHECK(d->ram[1].backing == "memfd:ram-hi");
  CHECK(d->ram[1].backing_offset == 0x80000000);
  CHECK(d->ram[2].backing.empty());
  REQUIRE(d->find(0, vcpu_state_tag::regs));
  CHECK(d->find(0, vcpu_state_tag::regs)->bytes == bytes_of("0123456789abcdef"));
  CHECK(d->find(1, vcpu_state_tag::msrs)->bytes.empty());
  CHECK(d->find(1, vcpu_state_tag::regs) == nullptr);
  CHECK(d->extra == bytes_of("virtio-net queues"));
  // A minimal one too: no devices, no RAM, no blobs, no extra.
  snapshot m;
  m.owner = s.owner;
  m.nr_vcpus = 1;
  const auto mb = encoded(m);
  CHECK(mb.size() == snapshot_header_bytes);
  CHECK(*decode_snapshot(mb) == m);
}

TEST_CASE("snapshot: every single-bit flip is refused") {
  const auto b = encoded(sample());
  for (std::size_t i = 0; i < b.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      auto c = b;
      c[i] ^= std::byte{static_cast<std::uint8_t>(1u << bit)};
      const auto r = decode_snapshot(c);
      if (r || r.code() != errc::protocol) FAIL_CHECK("flip of byte " << i << " bit " << bit << " accepted");
    }
}

TEST_CASE("snapshot: every truncation and any extension is refused") {
  const auto b = encoded(sample());
  for (std::size_t n = 0; n < b.size(); ++n) {
    const auto r = decode_snapshot(std::span{b}.first(n));
    if (r || r.code() != errc::protocol) FAIL_CHECK("truncation to " << n << " bytes accepted");
  }
  CHECK(refusal({}).find("truncated header (0 bytes)") != std::string::npos);
  auto longer = b;
  longer.push_back(std::byte{0});
  CHECK(refusal(longer).find("header says") != std::string::npos);
  // Longer and resealed: the records end before the buffer does.
  for (int i = 0; i < 7; ++i) longer.push_back(std::byte{0});
  reseal(longer);
  CHECK(refusal(longer).find("8 trailing bytes") != std::string::npos);
}

TEST_CASE("snapshot: another version, a bad magic, a bad checksum") {
  const auto b = encoded(sample());
  auto v2 = b;
  v2[16 + 20] = std::byte{'2'};
  reseal(v2);
  CHECK(refusal(v2).find("unknown version \"keepalive-snapshot-v2\"") != std::string::npos);
  auto suffix = b;
  suffix[16 + 21] = std::byte{'x'};  // "keepalive-snapshot-v1x"
  reseal(suffix);
  CHECK(refusal(suffix).find("unknown version") != std::string::npos);
  auto magic = b;
  magic[3] = std::byte{'M'};
  CHECK(refusal(magic).find("bad magic") != std::string::npos);
  auto sum = b;
  sum[b.size() - 30] ^= std::byte{1};
  CHECK(refusal(sum).find("checksum") != std::string::npos);
}

TEST_CASE("snapshot: content that is inconsistent is refused even with a valid checksum") {
  const auto b = encoded(sample());
  auto refuse = [&](std::size_t at, std::uint64_t v, int n, std::string_view reason) {
    auto c = b;
    put_le(c, at, v, n);
    reseal(c);
    const auto msg = refusal(c);
    INFO(msg);
    CHECK(msg.find(reason) != std::string::npos);
  };
  refuse(88, 1, 8, "header reserved field not zero");
  refuse(64, 0, 4, "0 vCPUs");
  refuse(64, 2, 4, "vCPU 2 of 2");  // device 0's vector 0 is routed to vCPU 2
  refuse(68, 300, 4, "300 devices");
  refuse(dev0 + 10, 3, 1, "irq mode 3");
  refuse(dev0 + 11, 1, 1, "reserved field not zero");
  refuse(dev0 + 12, 1, 4, "reserved field not zero");
  refuse(dev0 + 16 + 3, 1, 1, "reserved field not zero");
  refuse(dev0 + 16 + 8, 0, 2, "MSI-X index 0 out of range or repeated");
  refuse(dev0 + 16 + 2, 0x0e, 1, "exception vector");
  refuse(dev1, 0x3b00, 4, "device 0000:3b:00.0 listed twice");
  refuse(ram0 + 16, 0x1800, 8, "not 4 KiB aligned");
  refuse(ram0 + 44, 1, 4, "reserved field not zero");
  refuse(ram0 + 48 + 15, 1, 1, "padding not zero");
  refuse(ram0 + 48, 0x01, 1, "not printable");
  refuse(ram0 + 64, 0x1000, 8, "overlap at GPA");  // region 1's GPA inside region 0
  refuse(ram0 + 64 + 8, 0x1000, 8, "overlap at IOVA");
}

TEST_CASE("snapshot: nil token and unknown vCPU state tags are refused") {
  auto s = sample();
  s.owner = token{};
  CHECK(encode_snapshot(s).code() == errc::invalid);
  auto b = encoded(sample());
  std::memset(b.data() + 48, 0, 16);
  reseal(b);
  CHECK(refusal(b).find("nil token") != std::string::npos);
  for (std::uint32_t tag : {0u, 12u, 0xffffu}) {
    auto t = sample();
    t.vcpu_state[1].tag = static_cast<vcpu_state_tag>(tag);
    CHECK(encode_snapshot(t).code() == errc::invalid);
  }
  auto dup = sample();
  dup.vcpu_state.push_back(dup.vcpu_state[0]);
  CHECK(encode_snapshot(dup).err().message().find("vCPU 0: regs given twice") != std::string::npos);
  CHECK(known_vcpu_state_tag(11));
  CHECK(!known_vcpu_state_tag(12));
  CHECK(known_vcpu_state_tag(0x10000));
}

TEST_CASE("snapshot: through a pipe, and a short pipe is refused") {
  const auto s = sample();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  REQUIRE(write_snapshot(p[1], s));
  ::close(p[1]);
  auto r = read_snapshot(p[0]);
  ::close(p[0]);
  REQUIRE(r);
  CHECK(*r == s);

  const auto b = encoded(s);
  REQUIRE(::pipe(p) == 0);
  REQUIRE(::write(p[1], b.data(), b.size() - 1) == static_cast<ssize_t>(b.size() - 1));
  ::close(p[1]);
  auto shorter = read_snapshot(p[0]);
  ::close(p[0]);
  CHECK(shorter.code() == errc::protocol);
  CHECK(shorter.err().message().find("end of file") != std::string::npos);
}

TEST_CASE("snapshot: describe() names every fact keepalivectl prints") {
  const auto text = describe(sample());
  CHECK(text.find("keepalive-snapshot-v1\n") == 0);
  CHECK(text.find("token 00112233-4455-4677-8899-aabbccddeeff") != std::string::npos);
  CHECK(text.find("device 0000:3b:00.0 group 42 irq posted vectors 3") != std::string::npos);
  CHECK(text.find("  msix 7 -> guest vector 0xef on vcpu 1") != std::string::npos);
  CHECK(text.find("device 0001:5e:02.3 group 7 irq masked vectors 1") != std::string::npos);
  CHECK(text.find("ram gpa 0x100000000 iova 0x80000000 size 0x40000000 vaddr 0x7f0080000000 backing \"memfd:ram-hi\" "
                  "+0x80000000") != std::string::npos);
  CHECK(text.find("vcpu 2 lapic 5 bytes") != std::string::npos);
  CHECK(text.find("vcpu 0 vmm+0x3 15 bytes") != std::string::npos);
  CHECK(text.find("extra 17 bytes") != std::string::npos);
}

TEST_CASE("snapshot: the checksum is keepalive::crc32c over the image with the field zero, for every length of tail") {
  // encode and decode checksum with the CPU's CRC32 instruction where there
  // is one; it must agree with the table-driven crc32c on every alignment.
  for (std::size_t n = 0; n < 80; ++n) {
    CAPTURE(n);
    auto s = sample();
    std::vector<std::byte> blob(n);
    for (std::size_t i = 0; i < n; ++i) blob[i] = static_cast<std::byte>(0x5a ^ (i * 29));
    s.vcpu_state.push_back({1, vcpu_state_tag::xsave, blob});
    s.extra = blob;
    auto b = encoded(s);
    const auto sum = static_cast<std::uint32_t>(le(b, 4, 4));
    put_le(b, 4, 0, 4);
    CHECK(crc32c(b) == sum);
    put_le(b, 4, sum, 4);
    auto back = decode_snapshot(b);
    REQUIRE(back);
    CHECK(*back == s);
    b[b.size() - 1] ^= std::byte{1};  // any flipped bit is caught
    CHECK(!decode_snapshot(b));
  }
}
