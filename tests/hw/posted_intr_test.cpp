#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <keepalive/hw/posted_intr.hpp>

#include "field_check.hpp"

using namespace keepalive;
using namespace keepalive::hw;
using hwtest::check_field;
using hwtest::words;

static_assert(sizeof(posted_intr_desc) == 64);
static_assert(alignof(posted_intr_desc) == 64);
static_assert(posted_intr_desc::layout_is_exact());
static_assert(posted_intr_desc::control_offset == 32 && posted_intr_desc::nv_byte_offset == 34 &&
              posted_intr_desc::ndst_byte_offset == 36 && posted_intr_desc::reserved_offset == 40);
static_assert(pi_control::layout::on.first_bit() == 0 && pi_control::layout::sn.first_bit() == 1);

namespace {
std::array<unsigned char, 64> bytes_of(const posted_intr_desc& d) {
  std::array<unsigned char, 64> b{};
  std::memcpy(b.data(), &d, 64);
  return b;
}
}  // namespace

TEST_CASE("PID control: each field owns exactly its bits") {
  const auto from = [](const words<1>& w) { return pi_control::from_raw(w[0]); };
  const auto to = [](const pi_control& c) { return words<1>{c.raw()}; };
  check_field<1>(
      {0x1}, from, to, [](pi_control& c, bool v) { c = c.with_on(v); }, [](const pi_control& c) { return c.on(); },
      true, false, {true, false});
  check_field<1>(
      {0x2}, from, to, [](pi_control& c, bool v) { c = c.with_sn(v); }, [](const pi_control& c) { return c.sn(); },
      true, false, {true, false});
  check_field<1>(
      {0xFF0000}, from, to, [](pi_control& c, vector v) { c = c.with_nv(v); },
      [](const pi_control& c) { return c.nv(); }, vector{0xFF}, vector{0}, {vector{0xF2}, vector{0xF1}, vector{0x01}});
  check_field<1>(
      {0xFFFF'FFFF'0000'0000u}, from, to, [](pi_control& c, std::uint32_t v) { c = c.with_ndst(v); },
      [](const pi_control& c) { return c.ndst(); }, 0xFFFF'FFFFu, 0u, {0x500u, 0x12345u, 0x8000'0000u});
  CHECK(pi_control::layout::reserved == 0x0000'0000'FF00'FFFCu);
  CHECK(pi_control::from_raw(0x4).reserved_bits_set());
  CHECK(pi_control::from_raw(0x0100'0000).reserved_bits_set());
  CHECK_FALSE(pi_control::from_raw(0xFFFF'FFFF'00FF'0003u).reserved_bits_set());
}

TEST_CASE("PID bytes: PIR 0-31, ON/SN byte 32, NV byte 34, NDST bytes 36-39, rest reserved") {
  posted_intr_desc d;
  d.init_nonatomic(vector{0xF2}, encode_destination(apic_id{5}, apic_mode::xapic), true);
  CHECK(d.control_nonatomic().ndst() == 0x500u);  // xAPIC: (5 << 8) & 0xFF00
  vector_set s;
  for (unsigned v : {0u, 63u, 64u, 130u, 255u}) s.set(vector{static_cast<std::uint8_t>(v)});
  d.set_pir_nonatomic(s);
  const auto b = bytes_of(d);
  std::array<unsigned char, 64> want{};
  want[0] = 0x01;   // vector 0
  want[7] = 0x80;   // 63
  want[8] = 0x01;   // 64
  want[16] = 0x04;  // 130 = 128 + 2
  want[31] = 0x80;  // 255
  want[32] = 0x02;  // SN
  want[34] = 0xF2;  // NV
  want[37] = 0x05;  // NDST = 0x00000500, little endian
  CHECK(b == want);

  d.set_ndst_nonatomic(encode_destination(apic_id{0x0102'0304}, apic_mode::x2apic));
  d.set_sn_nonatomic(false);
  d.set_on_nonatomic(true);
  const auto c = bytes_of(d);
  CHECK(c[32] == 0x01);
  CHECK(c[36] == 0x04);
  CHECK(c[37] == 0x03);
  CHECK(c[38] == 0x02);
  CHECK(c[39] == 0x01);
  CHECK(d.control().destination(apic_mode::x2apic) == apic_id{0x0102'0304});
  CHECK(d.reserved_nonatomic() == std::array<std::uint64_t, 3>{});
}

TEST_CASE("post(): PIR bit, then ON and a notification only if ON clear and (SN clear or urgent)") {
  posted_intr_desc d;
  d.init_nonatomic(vector{0xF2}, 0x500);

  post_result r = d.post(vector{0x41}, false);
  CHECK_FALSE(r.pir_was_set_already);
  CHECK(r.notify);
  CHECK(r.control.on());
  CHECK(r.control.nv() == vector{0xF2});
  CHECK(r.control.ndst() == 0x500u);
  CHECK(d.control().on());

  r = d.post(vector{0x41}, false);  // same vector, ON already set
  CHECK(r.pir_was_set_already);
  CHECK_FALSE(r.notify);
  r = d.post(vector{0x42}, true);  // urgent does not matter once ON is set
  CHECK_FALSE(r.notify);
  CHECK(d.pending().count() == 2);

  // Suppressed: SN set, ON clear.
  CHECK(d.drain().count() == 2);
  CHECK_FALSE(d.control().on());
  CHECK_FALSE(d.set_sn());
  CHECK(d.set_sn());  // previous value
  r = d.post(vector{0x43}, false);
  CHECK_FALSE(r.notify);
  CHECK_FALSE(d.control().on());
  CHECK(d.pending().test(vector{0x43}));
  r = d.post(vector{0x44}, true);  // urgent ignores SN
  CHECK(r.notify);
  CHECK(d.control().on());
  CHECK(d.control().sn());
  CHECK(d.clear_sn());
  CHECK_FALSE(d.clear_sn());
}

TEST_CASE("clear_sn_and_check(): vectors posted under SN are not stranded (KVM after_clear_sn)") {
  posted_intr_desc d;
  d.init_nonatomic(vector{0xF2}, 0x500, /*sn=*/true);
  for (unsigned v : {0x20u, 0x21u, 0xEFu}) CHECK_FALSE(d.post(vector{static_cast<std::uint8_t>(v)}, false).notify);
  CHECK_FALSE(d.control().on());
  // A plain clear_sn would leave three pending vectors with ON clear and nobody notified.
  CHECK(d.clear_sn_and_check());
  CHECK(d.control().on());
  CHECK_FALSE(d.control().sn());
  CHECK_FALSE(d.clear_sn_and_check());  // ON already set: the notification is already owed/sent
  // And a later post does not notify again until the owner drains.
  CHECK_FALSE(d.post(vector{0x22}, false).notify);
  const vector_set got = d.drain();
  CHECK(got.count() == 4);
  CHECK(got.test(vector{0xEF}));

  posted_intr_desc empty;
  empty.init_nonatomic(vector{0xF2}, 0x500, true);
  CHECK_FALSE(empty.clear_sn_and_check());
  CHECK_FALSE(empty.control().on());
}

TEST_CASE("drain() takes everything and clears ON, pending() only looks") {
  posted_intr_desc d;
  d.init_nonatomic(vector{0xF2}, 0x500);
  vector_set want;
  for (unsigned v = 0; v < 256; v += 17) {
    const vector vec{static_cast<std::uint8_t>(v)};
    want.set(vec);
    (void)d.post(vec, false);
  }
  CHECK(d.pending() == want);
  CHECK(d.pending() == want);  // still there
  CHECK(d.control().on());
  CHECK(d.drain() == want);
  CHECK(d.pending().empty());
  CHECK_FALSE(d.control().on());
  CHECK(d.drain().empty());
  CHECK(d.control().nv() == vector{0xF2});  // the rest of control untouched
  CHECK(d.control().ndst() == 0x500u);
}

TEST_CASE("update_control(): CAS loop keeps the bits the function keeps") {
  posted_intr_desc d;
  d.init_nonatomic(vector{0xF2}, 0x500, true);
  (void)d.set_on();
  const pi_control n = d.update_control([](pi_control c) {
    return c.with_destination(apic_id{9}, apic_mode::xapic).with_nv(vector{0xF1}).with_sn(false);
  });
  CHECK(n == d.control());
  CHECK(n.on());
  CHECK_FALSE(n.sn());
  CHECK(n.nv() == vector{0xF1});
  CHECK(n.ndst() == 0x900u);
}

TEST_CASE("vector_set: membership, count, ascending iteration, set algebra") {
  vector_set s;
  CHECK(s.empty());
  CHECK(s.begin() == s.end());
  for (unsigned v : {255u, 0u, 64u, 63u, 128u, 7u}) s.set(vector{static_cast<std::uint8_t>(v)});
  CHECK(s.count() == 6);
  std::vector<unsigned> order;
  for (vector v : s) order.push_back(v.value());
  CHECK(order == std::vector<unsigned>{0, 7, 63, 64, 128, 255});
  s.reset(vector{64});
  CHECK_FALSE(s.test(vector{64}));
  CHECK(s.test(vector{63}));
  CHECK(s.words()[1] == 0);
  CHECK(s.words()[0] == ((std::uint64_t{1} << 63) | 0x81u));
  vector_set t;
  t.set(vector{7});
  t.set(vector{9});
  CHECK((s & t).count() == 1);
  CHECK((s | t).count() == 6);
  CHECK(vector_set::from_words(s.words()) == s);
}
