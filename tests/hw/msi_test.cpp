#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <optional>

#include <keepalive/hw/msi.hpp>

using namespace keepalive;
using namespace keepalive::hw;

static_assert(sizeof(msix_table_entry) == 16);
static_assert(msix_table_entry::data_offset == 8 && msix_table_entry::vector_control_offset == 12);
static_assert(msi_address_base == 0xFEE0'0000u);
static_assert(msi_layout::handle_14_0.lsb == 5 && msi_layout::handle_14_0.width == 15);

TEST_CASE("remappable MSI: the address Linux fill_msi_msg() writes") {
  // Handle 0x8001, subhandle 0 (Linux always sets SHV): bit 2 = HANDLE[15], bit 3 SHV,
  // bit 4 remappable, bits 19:5 = HANDLE[14:0] = 1, bits 31:20 = 0xFEE.
  const msi_message m = encode_remappable(irte_index{0x8001}, std::uint16_t{0});
  CHECK(m.address_lo == 0xFEE0'003Cu);
  CHECK((m.address_lo & 0x4) != 0);
  CHECK((m.address_lo & 0x8) != 0);
  CHECK((m.address_lo & 0x10) != 0);
  CHECK(((m.address_lo >> 5) & 0x7FFF) == 1);
  CHECK((m.address_lo >> 20) == 0xFEE);
  CHECK(m.address_hi == 0);
  CHECK(m.data == 0);
  CHECK(m.address() == 0xFEE0'003Cu);

  // No subhandle: SHV clear; handle 0x7FFF fills 19:5.
  const msi_message n = encode_remappable(irte_index{0x7FFF});
  CHECK(n.address_lo == 0xFEEF'FFF0u);
  CHECK(n.data == 0);
  CHECK(encode_remappable(irte_index{0}, std::uint16_t{0xABCD}).data == 0xABCDu);
}

TEST_CASE("remappable MSI: encode/decode round trip for every handle, effective index") {
  bool ok = true;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const irte_index idx{static_cast<std::uint16_t>(h)};
    const auto plain = decode_remappable(encode_remappable(idx));
    ok = ok && plain && plain->handle == idx && !plain->subhandle_valid && plain->effective_index() == h;
    const auto sub = decode_remappable(encode_remappable(idx, static_cast<std::uint16_t>(h * 7)));
    ok = ok && sub && sub->handle == idx && sub->subhandle_valid &&
         sub->subhandle == static_cast<std::uint16_t>(h * 7) &&
         sub->effective_index() == h + static_cast<std::uint16_t>(h * 7);
  }
  CHECK(ok);
  // Data is ignored without SHV.
  msi_message m = encode_remappable(irte_index{5});
  m.data = 3;
  CHECK(decode_remappable(m)->effective_index() == 5);
  m.address_lo |= 0x8;
  CHECK(decode_remappable(m)->effective_index() == 8);
  // Past the table: the caller compares with the IRTA size.
  CHECK(decode_remappable(encode_remappable(irte_index{0xFFFF}, std::uint16_t{0xFFFF}))->effective_index() == 0x1FFFEu);
}

TEST_CASE("classify: remappable, compatibility (not remapped), or not an interrupt at all") {
  CHECK(classify(encode_remappable(irte_index{1})) == msi_format::remappable);
  CHECK(classify({0xFEE0'1000u, 0, 0x30}) == msi_format::compatibility);
  CHECK(classify({0xFED0'0010u, 0, 0}) == msi_format::not_an_interrupt);
  CHECK(classify({0xFEE0'0010u, 1, 0}) == msi_format::not_an_interrupt);
  CHECK_FALSE(decode_remappable({0xFEE0'1000u, 0, 0x30}));  // compatibility: not an IRTE handle
  CHECK_FALSE(decode_remappable({0xFED0'0010u, 0, 0}));
  CHECK_FALSE(decode_compatibility(encode_remappable(irte_index{1})));
}

TEST_CASE("compatibility MSI: Linux-style fixed edge message to APIC 1, vector 0x30") {
  const auto c = decode_compatibility({0xFEE0'1000u, 0, 0x0000'0030u});
  REQUIRE(c);
  CHECK(c->destination == apic_id{1});
  CHECK(c->vec == vector{0x30});
  CHECK(c->dest == dest_mode::physical);
  CHECK(c->delivery == delivery_mode::fixed);
  CHECK(c->trigger == trigger_mode::edge);
  CHECK_FALSE(c->redirection_hint);

  const compatibility_msi all{
      apic_id{0xFF}, vector{0xEF}, dest_mode::logical, true, delivery_mode::lowest_priority, trigger_mode::level, true};
  const msi_message m = encode_compatibility(all);
  CHECK(m.address_lo == 0xFEEF'F00Cu);  // dest 19:12, RH bit 3, DM bit 2
  CHECK(m.data == 0x0000'C1EFu);        // trigger 15, level 14, delivery 10:8, vector 7:0
  CHECK(decode_compatibility(m) == all);
  for (unsigned d = 0; d < 256; ++d) {
    const compatibility_msi x{apic_id{d}, vector{static_cast<std::uint8_t>(255 - d)}};
    CHECK(decode_compatibility(encode_compatibility(x)) == x);
  }
}

TEST_CASE("MSI-X table entry: four dwords at 0, 4, 8, 12, mask is bit 0 of the last") {
  msix_table_entry e;
  e.set_message(encode_remappable(irte_index{0x8001}, std::uint16_t{0}));
  e.set_masked(true);
  unsigned char raw[16];
  std::memcpy(raw, &e, 16);
  std::uint32_t w[4];
  std::memcpy(w, raw, 16);
  CHECK(w[0] == 0xFEE0'003Cu);
  CHECK(w[1] == 0);
  CHECK(w[2] == 0);
  CHECK(w[3] == 1);
  CHECK(e.masked());
  e.set_vector_control(0xFFFF'FFFFu);
  e.set_masked(false);
  CHECK(e.vector_control() == 0xFFFF'FFFEu);  // other bits untouched
  e.set_address_hi(0x1234);
  e.set_data(0xABCD);
  e.set_address_lo(0xFEE0'1000u);
  CHECK(e.words() == msix_table_entry::words_type{0xFEE0'1000u, 0x1234, 0xABCD, 0xFFFF'FFFEu});
  CHECK(e.message() == msi_message{0xFEE0'1000u, 0x1234, 0xABCD});
  CHECK(msix_table_entry::from_words(e.words()) == e);
}

TEST_CASE("MSI-X capability: message control, table/PBA location") {
  CHECK(msix_cap::table_entries(0x0000) == 1);
  CHECK(msix_cap::table_entries(0xC7FF) == 2048);  // enable + function mask + 2048 entries
  CHECK(msix_cap::table_entries(msix_cap::encode_table_size(64)) == 64);
  CHECK(msix_cap::encode_table_size(64) == 63);
  CHECK(msix_cap::control_enable == 0x8000);
  CHECK(msix_cap::control_function_mask == 0x4000);
  CHECK(msix_cap::decode_location(0x0000'2003u) == msix_cap::bar_location{3, 0x2000});
  CHECK(msix_cap::encode_location({4, 0x3000}) == 0x3004u);
  CHECK(msix_cap::pba_bytes(1) == 8);
  CHECK(msix_cap::pba_bytes(64) == 8);
  CHECK(msix_cap::pba_bytes(65) == 16);
  CHECK(static_cast<unsigned>(pci::cap_id::msix) == 0x11);
}
