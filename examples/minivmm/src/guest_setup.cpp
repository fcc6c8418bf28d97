#include "guest_setup.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "guest/verify.h"

extern "C" {
extern const unsigned char minivmm_guest_image[];
extern const unsigned long minivmm_guest_image_size;
}

namespace keepalive::minivmm {
namespace {

constexpr std::uint64_t pte_present = 1, pte_write = 2, pte_pwt = 1u << 3, pte_pcd = 1u << 4, pte_large = 1u << 7;
constexpr std::uint64_t gib = 1ull << 30, two_mib = 2ull << 20;

// GDT entries (Intel SDM vol. 3 3.4.5): flat 64-bit code, flat data, accessed.
constexpr std::uint64_t gdt_code64 = 0x00af9b000000ffffull;
constexpr std::uint64_t gdt_data = 0x00cf93000000ffffull;
constexpr std::uint32_t tss_limit = 0x67;
constexpr std::uint8_t tss_type_busy64 = 0xb;

template <typename T>
void put(std::span<std::byte> ram, std::uint64_t gpa, const T& v) {
  std::memcpy(ram.data() + gpa, &v, sizeof v);
}

kvm_segment flat(std::uint16_t selector, std::uint8_t type, bool code) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = code ? 0 : 1;
  s.s = 1;
  s.l = code ? 1 : 0;
  s.g = 1;
  return s;
}

}  // namespace

status validate(const guest_config& c) {
  const std::uint32_t e = c.ring_entries, n = c.payload_bytes;
  if (e < 2 || e > 65536 || (e & (e - 1)) != 0) return {errc::invalid, "ring entries: power of two, 2..65536"};
  if (n < 8 || n > 1024 || n % 8 != 0) return {errc::invalid, "payload bytes: multiple of 8, 8..1024"};
  if (c.buffer_bytes < sizeof(ka_nic_packet_hdr) + n || c.buffer_bytes % 8 != 0)
    return {errc::invalid, "buffer bytes: >= 16 + payload, multiple of 8"};
  if (c.irq_mod_pkts < 1) return {errc::invalid, "irq moderation: at least one packet"};
  if (MINIVMM_TABLES_GPA + mv_tables_bytes(n) > MINIVMM_BUFFERS_GPA) return {errc::invalid, "verifier tables"};
  if (c.ram_bytes % two_mib != 0 || MINIVMM_BUFFERS_GPA + std::uint64_t{e} * c.buffer_bytes > c.ram_bytes)
    return {errc::invalid, fmt::format("guest RAM of {} bytes too small for the buffers", c.ram_bytes)};
  if (c.bar0_gpa < c.ram_bytes || c.bar0_gpa % KA_NIC_BAR0_SIZE != 0 || c.bar0_gpa + KA_NIC_BAR0_SIZE > MINIVMM_LAPIC_GPA)
    return {errc::invalid, "BAR0 must lie between RAM and the local APIC, aligned"};
  return {};
}

status load_guest(std::span<std::byte> ram, std::span<const std::byte> image, const guest_config& cfg,
                  std::uint32_t tsc_khz) {
  if (auto st = validate(cfg); !st) return st;
  if (ram.size() < cfg.ram_bytes) return {errc::invalid, "RAM mapping smaller than the configured RAM"};
  if (image.empty() || image.size() > MINIVMM_IMAGE_MAX) return {errc::invalid, "guest image size"};
  // Zero what the guest uses (tables, ring, buffers); the rest stays untouched
  // so a large RAM file stays sparse.
  const std::uint64_t used = MINIVMM_BUFFERS_GPA + std::uint64_t{cfg.ring_entries} * cfg.buffer_bytes;
  std::fill(ram.begin(), ram.begin() + static_cast<std::ptrdiff_t>(used), std::byte{0});

  std::memcpy(ram.data() + MINIVMM_IMAGE_GPA, image.data(), image.size());

  // Identity map of the first 4 GiB: RAM write-back, the MMIO gigabyte uncached.
  put(ram, MINIVMM_PML4_GPA, MINIVMM_PDPT_GPA | pte_present | pte_write);
  for (std::uint64_t i = 0; i < 4; ++i) {
    const std::uint64_t pd = MINIVMM_PD_GPA + i * 0x1000;
    put(ram, MINIVMM_PDPT_GPA + i * 8, pd | pte_present | pte_write);
    for (std::uint64_t j = 0; j < 512; ++j) {
      const std::uint64_t pa = i * gib + j * two_mib;
      const std::uint64_t cache = i == 3 ? (pte_pcd | pte_pwt) : 0;
      put(ram, pd + j * 8, pa | pte_present | pte_write | pte_large | cache);
    }
  }

  put(ram, MINIVMM_GDT_GPA + 0, std::uint64_t{0});
  put(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_CODE64, gdt_code64);
  put(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_DATA, gdt_data);
  const std::uint64_t tb = MINIVMM_TSS_GPA;
  const std::uint64_t tss_lo = (tss_limit & 0xffffull) | ((tb & 0xffffffull) << 16) |
                               (std::uint64_t{tss_type_busy64} << 40) | (1ull << 47) | (((tb >> 24) & 0xffull) << 56);
  put(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_TSS, tss_lo);
  put(ram, MINIVMM_GDT_GPA + MINIVMM_GDT_TSS + 8, tb >> 32);
  // TSS: RSP0/IST unused (no privilege change); the I/O map base past the limit (no bitmap).
  put(ram, MINIVMM_TSS_GPA + 0x66, std::uint16_t{0x68});

  minivmm_boot_info bi{};
  bi.magic = MINIVMM_BOOT_MAGIC;
  bi.version = MINIVMM_VERSION;
  bi.size = sizeof bi;
  bi.bar0_gpa = cfg.bar0_gpa;
  bi.ring_gpa = MINIVMM_RING_GPA;
  bi.buffers_gpa = MINIVMM_BUFFERS_GPA;
  bi.tables_gpa = MINIVMM_TABLES_GPA;
  bi.ring_entries = cfg.ring_entries;
  bi.buffer_bytes = cfg.buffer_bytes;
  bi.payload_bytes = cfg.payload_bytes;
  bi.irq_mod_pkts = cfg.irq_mod_pkts;
  bi.irq_mod_usec = cfg.irq_mod_usec;
  bi.verify_mode = cfg.verify;
  bi.tsc_khz = tsc_khz;
  bi.gap_epoch = 0;
  put(ram, MINIVMM_BOOT_INFO_GPA, bi);
  return {};
}

void initial_sregs(kvm_sregs& s) {
  s.cs = flat(MINIVMM_GDT_CODE64, 0xb, true);
  s.ds = s.es = s.fs = s.gs = s.ss = flat(MINIVMM_GDT_DATA, 0x3, false);
  s.tr = kvm_segment{};
  s.tr.base = MINIVMM_TSS_GPA;
  s.tr.limit = tss_limit;
  s.tr.selector = MINIVMM_GDT_TSS;
  s.tr.type = tss_type_busy64;
  s.tr.present = 1;
  s.ldt = kvm_segment{};
  s.ldt.unusable = 1;
  s.gdt.base = MINIVMM_GDT_GPA;
  s.gdt.limit = 5 * 8 - 1;
  s.idt.base = 0;
  s.idt.limit = 0;
  s.cr0 = 0x80050033;  // PG WP NE ET MP PE
  s.cr3 = MINIVMM_PML4_GPA;
  s.cr4 = 0x20;        // PAE
  s.efer = 0x500;      // LMA LME
}

kvm_regs initial_regs() {
  kvm_regs r{};
  r.rip = MINIVMM_IMAGE_GPA;
  r.rsp = MINIVMM_STACK_TOP;
  r.rdi = MINIVMM_BOOT_INFO_GPA;
  r.rflags = 0x2;
  return r;
}

std::span<const std::byte> builtin_guest_image() noexcept {
  return {reinterpret_cast<const std::byte*>(minivmm_guest_image), static_cast<std::size_t>(minivmm_guest_image_size)};
}

}  // namespace keepalive::minivmm
