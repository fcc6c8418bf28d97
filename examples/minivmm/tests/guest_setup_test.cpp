// Guest memory as the VMM lays it out: image, identity page tables, GDT/TSS,
// boot info; the long-mode sregs; config validation.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "guest_setup.hpp"

using namespace keepalive;
using namespace keepalive::minivmm;

namespace {
template <typename T>
T at(const std::vector<std::byte>& ram, std::uint64_t gpa) {
  T v{};
  std::memcpy(&v, ram.data() + gpa, sizeof v);
  return v;
}
}  // namespace

TEST_CASE("validate accepts the default and refuses each bad field") {
  CHECK(validate(guest_config{}));
  auto bad = [](auto mutate) {
    guest_config c;
    mutate(c);
    return validate(c).code();
  };
  CHECK(bad([](guest_config& c) { c.ring_entries = 3000; }) == errc::invalid);
  CHECK(bad([](guest_config& c) { c.ring_entries = 1; }) == errc::invalid);
  CHECK(bad([](guest_config& c) { c.payload_bytes = 12; }) == errc::invalid);
  CHECK(bad([](guest_config& c) { c.payload_bytes = 2048; }) == errc::invalid);
  CHECK(bad([](guest_config& c) { c.buffer_bytes = 24; }) == errc::invalid);  // < 16 + 16
  CHECK(bad([](guest_config& c) { c.irq_mod_pkts = 0; }) == errc::invalid);
  CHECK(bad([](guest_config& c) { c.ram_bytes = 4ull << 20; }) == errc::invalid);  // buffers do not fit
  CHECK(bad([](guest_config& c) { c.bar0_gpa = 0x800000; }) == errc::invalid);     // inside RAM
  CHECK(bad([](guest_config& c) { c.bar0_gpa = 0xfee00000; }) == errc::invalid);   // on the APIC
  CHECK(bad([](guest_config& c) { c.bar0_gpa = 0xc0001000; }) == errc::invalid);   // unaligned
}

TEST_CASE("load_guest writes image, identity tables, GDT, TSS and boot info") {
  guest_config cfg;
  std::vector<std::byte> ram(cfg.ram_bytes, std::byte{0xcc});
  const auto image = builtin_guest_image();
  REQUIRE(image.size() > 0);
  REQUIRE(image.size() <= MINIVMM_IMAGE_MAX);
  REQUIRE(load_guest(ram, image, cfg, 2'500'000));

  CHECK(std::memcmp(ram.data() + MINIVMM_IMAGE_GPA, image.data(), image.size()) == 0);
  CHECK(at<std::uint64_t>(ram, 0) == 0);  // RAM zeroed first

  CHECK(at<std::uint64_t>(ram, MINIVMM_PML4_GPA) == (MINIVMM_PDPT_GPA | 3));
  CHECK(at<std::uint64_t>(ram, MINIVMM_PML4_GPA + 8) == 0);
  for (std::uint64_t i = 0; i < 4; ++i) CHECK(at<std::uint64_t>(ram, MINIVMM_PDPT_GPA + 8 * i) == ((MINIVMM_PD_GPA + 0x1000 * i) | 3));
  // 2 MiB leaves: 0 -> 0 (WB), the APIC's leaf uncached (PCD|PWT).
  CHECK(at<std::uint64_t>(ram, MINIVMM_PD_GPA) == 0x83);
  CHECK(at<std::uint64_t>(ram, MINIVMM_PD_GPA + 8 * 5) == ((5ull << 21) | 0x83));
  const std::uint64_t apic_leaf = MINIVMM_PD_GPA + 0x3000 + 8 * ((MINIVMM_LAPIC_GPA >> 21) & 511);
  CHECK(at<std::uint64_t>(ram, apic_leaf) == (0xfee00000ull | 0x9b));

  CHECK(at<std::uint64_t>(ram, MINIVMM_GDT_GPA) == 0);
  CHECK(at<std::uint64_t>(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_CODE64) == 0x00af9b000000ffffull);
  CHECK(at<std::uint64_t>(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_DATA) == 0x00cf93000000ffffull);
  // TSS descriptor: limit 0x67, base 0x1800, type 0xb (busy 64-bit), present.
  CHECK(at<std::uint64_t>(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_TSS) == 0x00008b0018000067ull);
  CHECK(at<std::uint64_t>(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_TSS + 8) == 0);
  CHECK(at<std::uint16_t>(ram, MINIVMM_TSS_GPA + 0x66) == 0x68);

  const auto bi = at<minivmm_boot_info>(ram, MINIVMM_BOOT_INFO_GPA);
  CHECK(bi.magic == MINIVMM_BOOT_MAGIC);
  CHECK(bi.version == MINIVMM_VERSION);
  CHECK(bi.size == sizeof bi);
  CHECK(bi.bar0_gpa == cfg.bar0_gpa);
  CHECK(bi.ring_gpa == MINIVMM_RING_GPA);
  CHECK(bi.buffers_gpa == MINIVMM_BUFFERS_GPA);
  CHECK(bi.tables_gpa == MINIVMM_TABLES_GPA);
  CHECK(bi.ring_entries == cfg.ring_entries);
  CHECK(bi.buffer_bytes == cfg.buffer_bytes);
  CHECK(bi.payload_bytes == cfg.payload_bytes);
  CHECK(bi.irq_mod_pkts == cfg.irq_mod_pkts);
  CHECK(bi.irq_mod_usec == cfg.irq_mod_usec);
  CHECK(bi.verify_mode == MINIVMM_VERIFY_TABLES);
  CHECK(bi.tsc_khz == 2'500'000);
  CHECK(bi.gap_epoch == 0);
}

TEST_CASE("load_guest refuses a RAM mapping smaller than the config and an oversized image") {
  guest_config cfg;
  std::vector<std::byte> small(cfg.ram_bytes / 2);
  CHECK(load_guest(small, builtin_guest_image(), cfg, 1).code() == errc::invalid);
  std::vector<std::byte> ram(cfg.ram_bytes);
  std::vector<std::byte> huge(MINIVMM_IMAGE_MAX + 1);
  CHECK(load_guest(ram, huge, cfg, 1).code() == errc::invalid);
}

TEST_CASE("initial vCPU state: 64-bit code segment, paging, PAE, long mode active") {
  kvm_sregs s{};
  s.apic_base = 0xfee00900;
  initial_sregs(s);
  CHECK(s.cs.l == 1);
  CHECK(s.cs.db == 0);
  CHECK(s.cs.selector == MINIVMM_GDT_CODE64);
  CHECK(s.ss.selector == MINIVMM_GDT_DATA);
  CHECK(s.tr.selector == MINIVMM_GDT_TSS);
  CHECK(s.tr.type == 0xb);
  CHECK(s.ldt.unusable == 1);
  CHECK((s.cr0 & 0x80000001u) == 0x80000001u);
  CHECK((s.cr4 & 0x20u) == 0x20u);
  CHECK(s.efer == 0x500);
  CHECK(s.cr3 == MINIVMM_PML4_GPA);
  CHECK(s.gdt.base == MINIVMM_GDT_GPA);
  CHECK(s.apic_base == 0xfee00900);  // left as KVM set it
  const auto r = initial_regs();
  CHECK(r.rip == MINIVMM_IMAGE_GPA);
  CHECK(r.rsp == MINIVMM_STACK_TOP);
  CHECK(r.rdi == MINIVMM_BOOT_INFO_GPA);
  CHECK(r.rflags == 2);
}
