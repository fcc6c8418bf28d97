// Scenario fidelity: Linux's own VT-d structures, read from guest physical
// memory (/dev/mem) and decoded with the project's include/keepalive/hw types,
// against what Linux says it programmed (INTEL_IOMMU_DEBUGFS):
//  - RTADDR and IRTA as read from the DMAR unit's MMIO vs iommu_regset;
//  - every present root/context entry vs dmar_translation_struct, decoded
//    (present, TT, no reserved bits; edu's DID = the kept-alive domain ID);
//  - every second-level entry on every path of edu's domain vs
//    domain_translation_struct, and hw::translate() of the test buffer's
//    IOVAs = the physical pages behind it (/proc/self/pagemap);
//  - every present IRTE vs ir_translation_struct (decoded SID, vector,
//    destination), and edu's MSI message (remappable) naming a present IRTE
//    with edu's source ID.
// Prints "KA: fidelity.<key>=<value>" and one KA-CHECK line per mismatch.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "devmem.hpp"
#include "guest.hpp"
#include "keepalive/abi/ops.hpp"
#include "keepalive/hw/irte.hpp"
#include "keepalive/hw/msi.hpp"
#include "keepalive/hw/page_table.hpp"
#include "keepalive/hw/root_context.hpp"

namespace ka_guest {
namespace {

namespace hw = keepalive::hw;
using keepalive::hpa;

constexpr const char* debugfs = "/sys/kernel/debug/iommu/intel";

static_assert(hw::readable_phys_memory<devmem>);

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in{path};
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

struct tally {
  unsigned checked{0};
  unsigned mismatched{0};
  void expect(bool ok, const std::string& what) {
    ++checked;
    if (!ok) {
      ++mismatched;
      fmt::print("KA-CHECK: FAIL fidelity {}\n", what);
    }
  }
};

}  // namespace

int run_fidelity(const edu_location& loc, const std::uint8_t* buf, std::uint64_t iova, std::size_t bytes) {
  devmem mem;
  if (!mem.ok()) return fail("fidelity", "devmem");
  tally t;
  unsigned root_ctx = 0, ptes = 0, irtes = 0, regs = 0;

  // ---- Registers: debugfs vs the MMIO unit itself.
  std::uint64_t base = 0, rtaddr = 0, irta = 0;
  for (const auto& l : lines_of(std::string{debugfs} + "/iommu_regset")) {
    char name[32] = {};
    unsigned off = 0;
    std::uint64_t v = 0;
    if (std::sscanf(l.c_str(), "IOMMU: %*s Register Base Address: %" SCNx64, &v) == 1) base = v;
    if (std::sscanf(l.c_str(), "%31s 0x%x 0x%" SCNx64, name, &off, &v) == 3) {
      if (std::strcmp(name, "RTADDR") == 0) rtaddr = v;
      if (std::strcmp(name, "IRTA") == 0) irta = v;
    }
  }
  report("fidelity", "dmar_base", hex(base));
  report("fidelity", "rtaddr", hex(rtaddr));
  report("fidelity", "irta", hex(irta));
  if (!base || !rtaddr) return fail("fidelity", "iommu_regset");
  t.expect(mmio_read64(base, hw::rtaddr_register_offset) == rtaddr, "RTADDR register vs debugfs");
  t.expect(mmio_read64(base, 0xb8) == irta, "IRTA register vs debugfs");
  regs += 2;
  const hpa root_table{rtaddr & ~std::uint64_t{0xfff}};
  t.expect(!(rtaddr & hw::rtaddr_scalable_mode), "legacy (non-scalable) root table");

  // ---- Root and context entries.
  const auto edu_bdf = *keepalive::bdf::parse(loc.bdf);
  std::optional<hw::context_entry> edu_ctx;
  for (const auto& l : lines_of(std::string{debugfs} + "/dmar_translation_struct")) {
    unsigned bus = 0, dev = 0, fn = 0;
    std::uint64_t rhi = 0, rlo = 0, chi = 0, clo = 0;
    if (std::sscanf(l.c_str(), "%x:%x.%x 0x%" SCNx64 ":0x%" SCNx64 " 0x%" SCNx64 ":0x%" SCNx64, &bus, &dev, &fn,
                    &rhi, &rlo, &chi, &clo) != 7)
      continue;
    const auto b = static_cast<std::uint8_t>(bus);
    const auto devfn = static_cast<std::uint8_t>(dev << 3 | fn);
    const auto re = hw::read_root_entry(mem, root_table, b);
    t.expect(re.lo() == rlo && re.hi() == rhi, fmt::format("root entry bus {:02x}", bus));
    t.expect(re.present() && !re.reserved_bits_set(), fmt::format("root entry bus {:02x} decodes", bus));
    const auto ce = hw::read_context_entry(mem, re.context_table(), devfn);
    const std::string who = fmt::format("context {:02x}:{:02x}.{}", bus, dev, fn);
    t.expect(ce.lo() == clo && ce.hi() == chi, who);
    t.expect(ce.present() && !ce.reserved_bits_set() && !ce.invalid_encoding(), who + " decodes");
    root_ctx += 2;
    if (b == edu_bdf.bus() && devfn == edu_bdf.devfn()) edu_ctx = ce;
  }
  t.expect(edu_ctx.has_value(), "edu has a context entry");
  if (!edu_ctx) return fail("fidelity", "edu_context");
  report("fidelity", "edu_did", edu_ctx->domain_id().value());
  report("fidelity", "edu_levels", edu_ctx->levels());
  report("fidelity", "edu_slptptr", hex(edu_ctx->slptptr().value()));
  t.expect(edu_ctx->translation_type() == hw::translation_type::multi_level, "edu context TT multi-level");
  if (auto ctl = keepalive::abi::linux_syscalls().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR)) {
    if (auto rows = keepalive::abi::list_devices(keepalive::abi::linux_syscalls(), *ctl); rows && rows->size() == 1)
      t.expect((*rows)[0].domain == edu_ctx->domain_id(), "kept-alive domain ID = edu's context DID");
    keepalive::abi::linux_syscalls().close(*ctl);
  }

  // ---- Second-level tables of edu's domain: every path debugfs prints.
  const unsigned levels = edu_ctx->levels();
  const hpa slpt = edu_ctx->slptptr();
  unsigned rows = 0;
  for (const auto& l : lines_of(std::string{debugfs} + "/" + loc.bdf + "/domain_translation_struct")) {
    std::uint64_t pfn = 0, path[5] = {};
    const int n = std::sscanf(l.c_str(), "0x%" SCNx64 " | 0x%" SCNx64 " 0x%" SCNx64 " 0x%" SCNx64 " 0x%" SCNx64
                                         " 0x%" SCNx64,
                              &pfn, &path[0], &path[1], &path[2], &path[3], &path[4]);
    if (n < 4) continue;
    ++rows;
    // path[0] is PML5E (level 5) ... path[4] is the PTE (level 1).
    const std::uint64_t va = pfn << hw::page_shift;
    hpa table = slpt;
    for (unsigned level = levels; level >= 1; --level) {
      const std::uint64_t want = path[5 - level];
      const auto e = hw::sl_pte::from_raw(mem.load64(table + hw::level_index(va, level) * hw::pte_bytes));
      t.expect(e.raw() == want, fmt::format("SL entry level {} for IOVA {:#x}", level, va));
      t.expect(e.present() && !e.reserved_bits_set(level), fmt::format("SL entry level {} decodes", level));
      ++ptes;
      if (e.is_leaf(level)) break;
      table = e.address();
    }
  }
  report("fidelity", "sl_rows", rows);
  for (std::size_t off = 0; off < bytes; off += 4096) {
    const auto w = hw::translate(mem, slpt, levels, keepalive::iova{iova + off}, hw::dma_access::write);
    const auto phys = virt_to_phys(buf + off);
    t.expect(w.has_value() && phys && w->address.value() == *phys,
             fmt::format("IOVA {:#x} translates to the buffer's page {:#x}", iova + off, phys.value_or(0)));
    t.expect(w.has_value() && w->perms == hw::perm::read_write, fmt::format("IOVA {:#x} is read/write", iova + off));
  }

  // ---- Interrupt remapping table.
  const auto irta_reg = hw::irta_reg::from_raw(irta);
  std::map<unsigned, hw::irte> present;
  for (const auto& l : lines_of(std::string{debugfs} + "/ir_translation_struct")) {
    std::uint64_t table_addr = 0;
    if (std::sscanf(l.c_str(), " IR table address:%" SCNx64, &table_addr) == 1) {
      t.expect(table_addr == irta_reg.base().value(), "IR table address vs IRTA");
      continue;
    }
    unsigned idx = 0, bus = 0, dev = 0, fn = 0, dst = 0, vec = 0;
    std::uint64_t hi = 0, lo = 0;
    if (std::sscanf(l.c_str(), " %u %x:%x.%x %x %x %" SCNx64 " %" SCNx64, &idx, &bus, &dev, &fn, &dst, &vec, &hi,
                    &lo) != 8)
      continue;
    const hpa slot = irta_reg.base() + std::uint64_t{idx} * 16;
    const auto e = hw::irte::from_words(mem.load64(slot), mem.load64(slot + 8));
    const std::string who = fmt::format("IRTE {}", idx);
    t.expect(e.lo() == lo && e.hi() == hi, who);
    t.expect(e.present() && !e.is_posted() && !e.reserved_bits_set(irta_reg.mode()), who + " decodes");
    t.expect(e.sid() == ((bus << 8) | (dev << 3) | fn) && e.vector().value() == vec && e.dst() == dst,
             who + " SID/vector/destination as debugfs decodes them");
    irtes += 3;
    present[idx] = e;
  }
  report("fidelity", "irtes_present", present.size());

  // ---- edu's MSI message names a present IRTE with edu's source ID.
  std::uint8_t config[256] = {};
  for (unsigned off = 0; off < sizeof config; off += 4) {
    const auto w = sysfs_config_read(loc.bdf, off, 4);
    if (w) std::memcpy(config + off, &*w, 4);
  }
  if (const unsigned cap = find_capability(config, sizeof config, pci_cap_id_msi); cap) {
    std::uint16_t control = 0;
    std::memcpy(&control, config + cap + 2, 2);
    const bool is64 = control & 0x80;
    hw::msi_message m{};
    std::memcpy(&m.address_lo, config + cap + 4, 4);
    if (is64) std::memcpy(&m.address_hi, config + cap + 8, 4);
    std::uint16_t data = 0;
    std::memcpy(&data, config + cap + (is64 ? 12 : 8), 2);
    m.data = data;
    const auto r = hw::decode_remappable(m);
    t.expect(r.has_value(), "edu MSI is in remappable format");
    if (r) {
      const unsigned index = r->effective_index();
      report("fidelity", "edu_irte", index);
      const auto it = present.find(index);
      t.expect(it != present.end() && it->second.sid() == edu_bdf.source_id(),
               fmt::format("edu MSI handle {} -> present IRTE with SID {:#x}", index, edu_bdf.source_id()));
      ++irtes;
    }
  }

  t.expect(mem.failures() == 0, "every /dev/mem read succeeded");
  report("fidelity", "registers_checked", regs);
  report("fidelity", "root_context_checked", root_ctx);
  report("fidelity", "sl_entries_checked", ptes);
  report("fidelity", "irte_checks", irtes);
  report("fidelity", "checks", t.checked);
  report("fidelity", "mismatches", t.mismatched);
  report("fidelity", "entries_checked", regs + root_ctx + ptes + irtes);
  return t.mismatched == 0 ? 0 : 1;
}

}  // namespace ka_guest
