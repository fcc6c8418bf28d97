// The VMM-restart state in the library's snapshot: every field of the VM's
// own state round-trips through keepalive-snapshot-v1 (with the session's
// devices and RAM beside it); anything the mini-VMM does not write is refused.
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

vm_state sample() {
  vm_state s;
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
  s.route.msix_index = 3;
  s.route.guest_vector = vector{0x51};
  s.route.guest_apic = apic_id{7};
  s.route.gsi = 31;
  s.pause_started_ns = 123456789012345ull;
  return s;
}

// What the session's freeze(tok) gives: devices and RAM, no vCPU state yet.
snapshot frozen() {
  snapshot snap;
  snap.owner = tok;
  snap.devices.push_back({bdf{0, 0, 4, 0}, 4, abi::irq_mode::posted, nic_spec(bdf{0, 0, 4, 0}, sample().route).vectors});
  snap.ram = {{gpa{0}, iova{0}, 32ull << 20, 0x4000000, "minivmm-guest-ram", 64ull << 20}};
  return snap;
}

snapshot complete(const vm_state& s) {
  auto snap = frozen();
  auto st = add_vmm_state(snap, to_session_state(s));
  INFO((st ? std::string{"ok"} : st.err().message()));
  REQUIRE(st);
  return snap;
}

void check_same(const vm_state& d, const vm_state& s) {
  CHECK(d.ram_phys_offset == s.ram_phys_offset);
  CHECK(d.tsc_khz == s.tsc_khz);
  CHECK(d.guest.ram_bytes == s.guest.ram_bytes);
  CHECK(d.guest.bar0_gpa == s.guest.bar0_gpa);
  CHECK(d.guest.ring_entries == s.guest.ring_entries);
  CHECK(d.guest.buffer_bytes == s.guest.buffer_bytes);
  CHECK(d.guest.payload_bytes == s.guest.payload_bytes);
  CHECK(d.guest.irq_mod_pkts == s.guest.irq_mod_pkts);
  CHECK(d.guest.irq_mod_usec == s.guest.irq_mod_usec);
  CHECK(d.guest.verify == s.guest.verify);
  REQUIRE(d.vcpus.size() == s.vcpus.size());
  for (std::size_t k = 0; k < s.vcpus.size(); ++k) {
    const auto& a = d.vcpus[k];
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
  for (std::size_t i = 0; i < 3; ++i) CHECK(same(d.irqchip.chips[i], s.irqchip.chips[i]));
  CHECK(d.route.msix_index == s.route.msix_index);
  CHECK(d.route.guest_vector == s.route.guest_vector);
  CHECK(d.route.guest_apic == s.route.guest_apic);
  CHECK(d.route.gsi == s.route.gsi);
  CHECK(d.pause_started_ns == s.pause_started_ns);
}

}  // namespace

TEST_CASE("every field of the VM state round-trips through keepalive-snapshot-v1") {
  const auto s = sample();
  const auto snap = complete(s);
  CHECK(snap.nr_vcpus == 2);
  CHECK(snap.vcpu_state.size() == 20);  // 10 blobs per vCPU
  // KVM's own ioctl structures, byte for byte, under the tags that name them.
  const auto* lapic = snap.find(1, vcpu_state_tag::lapic);
  REQUIRE(lapic);
  REQUIRE(lapic->bytes.size() == sizeof(kvm_lapic_state));
  CHECK(std::memcmp(lapic->bytes.data(), &s.vcpus[1].lapic, sizeof(kvm_lapic_state)) == 0);
  const auto* msrs = snap.find(0, vcpu_state_tag::msrs);
  REQUIRE(msrs);
  CHECK(msrs->bytes.size() == 3 * 16);  // struct kvm_msr_entry each
  std::uint32_t index = 0;
  std::uint64_t data = 0;
  std::memcpy(&index, msrs->bytes.data(), 4);
  std::memcpy(&data, msrs->bytes.data() + 8, 8);
  CHECK(index == 0xc0000082u);
  CHECK(data == 0x1122334455667788ull);
  auto img = encode_snapshot(snap);
  REQUIRE(img);
  auto back = decode_snapshot(*img);
  REQUIRE(back);
  CHECK(*back == snap);
  auto d = vm_state_of(*back);
  REQUIRE(d);
  check_same(*d, s);
  // Re-encoding what was decoded gives the same bytes.
  CHECK(*encode_snapshot(complete(*d)) == *img);
  // The library's description (what `keepalivectl decode-snapshot` prints).
  const auto text = describe(*back);
  CHECK(text.find("0000:00:04.0") != std::string::npos);
  CHECK(text.find("minivmm-guest-ram") != std::string::npos);
}

TEST_CASE("the vCPU state is refused unless it is the mini-VMM's") {
  const auto good = complete(sample());
  auto s = good;
  s.extra.pop_back();
  CHECK(vm_state_of(s).code() == errc::protocol);
  s = good;
  s.extra[0] = std::byte{'X'};  // not minivmm-vm-v1
  CHECK(vm_state_of(s).code() == errc::protocol);
  s = good;
  s.vcpu_state.erase(s.vcpu_state.begin() + 4);  // vCPU 0 without its LAPIC
  CHECK(vm_state_of(s).code() == errc::protocol);
  s = good;
  s.vcpu_state[0].bytes.pop_back();  // KVM_GET_REGS one byte short
  CHECK(vm_state_of(s).code() == errc::protocol);
  s = good;
  s.vcpu_state.push_back({1, vcpu_state_tag::cpuid, {}});  // a blob it never writes
  CHECK(vm_state_of(s).code() == errc::protocol);
  s = good;
  s.vcpu_state[8].bytes[4] = std::byte{1};  // kvm_msr_entry reserved
  CHECK(vm_state_of(s).code() == errc::protocol);
  auto bad = sample();
  bad.guest.ring_entries = 1000;  // not a power of two
  CHECK(vm_state_of(complete(bad)).code() == errc::protocol);
  // A snapshot from freeze(tok) alone has no vCPU state: never written.
  CHECK(encode_snapshot(frozen()).code() == errc::invalid);
  CHECK(vm_state_of(frozen()).code() == errc::protocol);
}

TEST_CASE("any flipped byte or truncation of the image is refused") {
  const auto img = *encode_snapshot(complete(sample()));
  for (std::size_t i = 0; i < img.size(); i += 97) {
    auto v = img;
    v[i] ^= std::byte{0x20};
    CHECK(decode_snapshot(v).code() == errc::protocol);
  }
  for (std::size_t n = 0; n < img.size(); n += 211) CHECK(decode_snapshot(std::span{img}.first(n)).code() == errc::protocol);
}

TEST_CASE("restarts that carry the device fds: the VM state alone, under a fresh token") {
  const auto s = sample();
  auto snap = snapshot_without_devices(s);
  REQUIRE(snap);
  CHECK(snap->devices.empty());
  CHECK(!snap->owner.is_nil());
  auto d = vm_state_of(*decode_snapshot(*encode_snapshot(*snap)));
  REQUIRE(d);
  check_same(*d, s);
}

TEST_CASE("write_snapshot / read_snapshot through a pipe") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const auto snap = complete(sample());
  std::thread writer{[&] {
    CHECK(write_snapshot(fds[1], snap));
    ::close(fds[1]);
  }};
  auto got = read_snapshot(fds[0]);
  writer.join();
  ::close(fds[0]);
  REQUIRE(got);
  CHECK(*got == snap);
}
