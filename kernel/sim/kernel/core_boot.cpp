// Boot (fresh or adopting a handover image) and the kexec shutdown path.
#include <algorithm>
#include <cstring>
#include <set>

#include <fmt/format.h>

#include "core.hpp"
#include "handover.hpp"
#include "keepalive/hw/msi.hpp"
#include "keepalive/hw/page_table.hpp"
#include "keepalive/hw/pci.hpp"
#include "keepalive/hw/root_context.hpp"
#include "keepalive_handover.h"

namespace keepalive::sim {

kernel_core::kernel_core(platform& plat, const kernel_config& cfg)
    : plat_{plat},
      cfg_{cfg},
      gate_{std::make_shared<irq_gate>(this)},
      mem_{plat.memory(), cfg.map},
      irte_used_(hw::ir_table_max_entries, false),
      did_used_(65536, false) {}

kernel_core::~kernel_core() { gate_->close(); }

vdev* kernel_core::find_dev(bdf b) {
  for (auto& d : devices_)
    if (d->address == b) return d.get();
  return nullptr;
}

std::uint32_t kernel_core::cfg_read(vdev& d, std::uint16_t off, unsigned size) { return d.fn->config_read(off, size); }
void kernel_core::cfg_write(vdev& d, std::uint16_t off, unsigned size, std::uint32_t v) {
  d.fn->config_write(off, size, v);
}

status kernel_core::boot() {
  std::lock_guard lock{mu_};
  for (const auto& fn : plat_.functions()) {
    auto d = std::make_unique<vdev>();
    d->fn = fn.get();
    d->address = fn->address();
    auto read8 = [&](std::uint16_t off) { return static_cast<std::uint8_t>(fn->config_read(off, 1)); };
    unsigned entries = 0;
    if (auto cap = hw::pci::find_capability(read8, hw::pci::cap_id::msix))
      entries = hw::msix_cap::table_entries(static_cast<std::uint16_t>(fn->config_read(*cap + hw::msix_cap::message_control, 2)));
    d->vectors.resize(entries);
    devices_.push_back(std::move(d));
  }

  // A handover image left by the previous kernel (stage 2)?
  std::vector<bdf> restored;
  const hpa area{cfg_.map.handover_start()};
  auto& pm = plat_.memory();
  std::uint64_t magic = 0, total = 0;
  std::memcpy(&magic, pm.base() + area.value(), sizeof magic);
  if (magic == KEEPALIVE_HANDOVER_MAGIC) {
    std::memcpy(&total, pm.base() + area.value() + offsetof(keepalive_handover_hdr_ser, total_bytes), sizeof total);
    const std::uint64_t n = std::min<std::uint64_t>(total, cfg_.map.handover_bytes());
    std::vector<std::byte> image(pm.base() + area.value(), pm.base() + area.value() + n);
    std::memset(pm.base() + area.value(), 0, cfg_.map.handover_bytes());  // consumed either way
    if (auto st = adopt_handover(image, restored); !st) {
      refuse_handover(image, st.err());
      restored.clear();
    }
  }
  if (auto st = init_tables(); !st) return st;
  enumerate(restored);
  plat_.vtd().set_cpu_sink([gate = gate_](apic_id cpu, vector v) { return gate->call(cpu, v); });
  return {};
}

status kernel_core::adopt_handover(std::span<const std::byte> bytes, std::vector<bdf>& restored) {
  auto img = handover::decode(bytes);
  if (!img) return img.err();
  auto& pm = plat_.memory();
  const auto irta = hw::irta_reg::from_raw(img->iommu.irta);
  // Everything the image points at must be memory the old kernel handed over.
  std::set<std::uint64_t> handed;
  for (const auto& r : img->ranges) {
    if (!mem_.reserve(r.start, r.bytes))
      return {errc::protocol, fmt::format("handover image: range [{:#x}, +{:#x}) outside kernel memory or in use",
                                          r.start.value(), r.bytes)};
    for (std::uint64_t off = 0; off < r.bytes; off += page_size) handed.insert(r.start.value() + off);
  }
  auto is_handed = [&](hpa a) { return handed.count(a.value() & ~(page_size - 1)) != 0; };
  if (!is_handed(img->iommu.root_table)) return {errc::protocol, "handover image: root table not handed over"};
  for (std::uint64_t off = 0; off < hw::ir_table_max_bytes; off += page_size)
    if (!is_handed(irta.base() + off)) return {errc::protocol, "handover image: IR table not handed over"};

  root_table_ = img->iommu.root_table;
  ir_table_ = irta.base();
  for (unsigned bus = 0; bus < hw::root_entries; ++bus) {
    const auto w = hw::read_entry128(mem_, root_table_ + bus * hw::root_entry_bytes);
    const auto re = hw::root_entry::from_words(w[0], w[1]);
    if (!re.present()) continue;
    if (!is_handed(re.context_table())) return {errc::protocol, "handover image: context table not handed over"};
    context_tables_[static_cast<std::uint8_t>(bus)] = re.context_table();
  }

  std::set<std::uint32_t> kept_sids;
  std::set<std::uint16_t> kept_irtes;
  for (const auto& rec : img->devices) {
    vdev* d = find_dev(rec.device);
    if (!d) {
      queue_event(VFIO_KEEPALIVE_EVENT_ENUM_FAILED, rec.device, ENODEV, 0);
      continue;  // its IRTEs and context entry are cleared below
    }
    kept_sids.insert(rec.device.source_id());
    auto dom = std::make_shared<domain_obj>();
    dom->did = rec.did;
    dom->levels = rec.levels;
    dom->root = rec.sl_root;
    dom->state = fsm::domain_state::preserved;
    dom->attached = 1;
    // Walk the second-level tables, checking each table is handed over
    // BEFORE reading it: the image is validated, its pointers are not trusted.
    bool tables_ok = true;
    auto walk = [&](auto& self, hpa table, unsigned level) -> void {
      if (!tables_ok || (table.value() & (page_size - 1)) != 0 || !is_handed(table)) {
        tables_ok = false;
        return;
      }
      dom->pages.push_back(table);
      if (level == 1) return;
      for (std::size_t i = 0; i < hw::pt_entries && tables_ok; ++i) {
        const auto e = hw::sl_pte::from_raw(mem_.load64(table + i * hw::pte_bytes));
        if (e.present() && !e.is_leaf(level)) self(self, e.address(), level - 1);
      }
    };
    walk(walk, dom->root, dom->levels);
    if (!tables_ok) return {errc::protocol, fmt::format("handover image: {} page tables not handed over", rec.device.to_string())};
    const auto ctx = hw::resolve_context(mem_, root_table_, rec.device);
    if (!ctx || ctx->entry.slptptr() != dom->root || ctx->entry.domain_id() != dom->did)
      return {errc::protocol, fmt::format("handover image: {} context entry does not match", rec.device.to_string())};
    for (hw::mapped_leaf leaf : [&] {
           std::vector<hw::mapped_leaf> v;
           hw::for_each_leaf(mem_, dom->root, dom->levels, [&](const hw::mapped_leaf& l) { v.push_back(l); });
           return v;
         }())
      dom->maps[leaf.start.value()] = {leaf.size, leaf.target,
                                       static_cast<std::uint32_t>(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE)};
    did_used_[dom->did.value()] = true;
    d->domain = dom;
    d->owner_token = rec.owner;
    d->irq_mode = rec.irq_mode;
    d->bar0 = rec.bar[0];
    d->in_handover = true;
    for (const auto& v : rec.vectors) {
      if (v.msix.value() >= d->vectors.size())
        return {errc::protocol, fmt::format("handover image: {} vector {} beyond its MSI-X table", rec.device.to_string(), v.msix.value())};
      auto& slot = d->vectors[v.msix.value()];
      slot.state = fsm::vector_state::preserved;
      slot.irte = v.irte;
      irte_used_[v.irte.value()] = true;
      kept_irtes.insert(v.irte.value());
      slot.masked_for_keepalive = rec.irq_mode == VFIO_KEEPALIVE_IRQ_MASKED;
      if (v.posted) {
        if (!is_handed(v.pid)) return {errc::protocol, "handover image: descriptor not handed over"};
        auto it = pids_.find(v.pid.value());
        std::shared_ptr<pid_obj> p = it != pids_.end() ? it->second.lock() : nullptr;
        if (!p) {
          p = std::make_shared<pid_obj>();
          p->id = next_pid_id_++;
          p->addr = v.pid;
          p->ndst = apic_id{desc(*p).control().ndst()};
          p->preserved = true;
          pids_[v.pid.value()] = p;
        }
        slot.pid = p;
        slot.pir_bit = v.guest_vector;
      }
    }
    d->state = fsm::device_state::restored;
    restored.push_back(rec.device);
  }
  // Free descriptor slots in the handed-over descriptor pages.
  for (const auto& [addr, weak] : pids_) {
    const hpa page{addr & ~(page_size - 1)};
    if (std::find(pid_pages_.begin(), pid_pages_.end(), page) != pid_pages_.end()) continue;
    pid_pages_.push_back(page);
    for (std::uint64_t off = 0; off < page_size; off += sizeof(hw::posted_intr_desc))
      if (!pids_.count(page.value() + off)) free_pid_slots_.push_back(page + off);
  }
  // What the old kernel left for devices that were not kept: cleared.
  for (auto& [bus, table] : context_tables_)
    for (unsigned devfn = 0; devfn < hw::context_entries; ++devfn) {
      const std::uint16_t sid = static_cast<std::uint16_t>(bus << 8 | devfn);
      if (kept_sids.count(sid)) continue;
      hw::write_entry128(mem_, table + devfn * hw::context_entry_bytes, {0, 0});
    }
  for (std::size_t i = 0; i < hw::ir_table_max_entries; ++i)
    if (!kept_irtes.count(static_cast<std::uint16_t>(i)) && hw::irte_load(irte_slot(irte_index{static_cast<std::uint16_t>(i)})).present())
      hw::irte_store_atomic(irte_slot(irte_index{static_cast<std::uint16_t>(i)}), hw::irte{});
  (void)pm;
  stats_.generation = img->generation + 1;
  event_seq_ = std::max(event_seq_, img->event_seq);
  return {};
}

void kernel_core::refuse_handover(std::span<const std::byte> image, const error& why) {
  ++stats_.handover_rejected;
  // The counters the image carried still move forward: event sequence numbers
  // stay strictly increasing across kexec even when the image is refused.
  if (image.size() >= sizeof(keepalive_handover_hdr_ser)) {
    keepalive_handover_hdr_ser hdr{};
    std::memcpy(&hdr, image.data(), sizeof hdr);
    stats_.generation = std::max<std::uint64_t>(stats_.generation, hdr.generation + 1);
    event_seq_ = std::max<std::uint64_t>(event_seq_, hdr.event_seq);
  }
  // Undo any partial adoption: nothing of a refused image is used.
  root_table_ = hpa{0};
  ir_table_ = hpa{0};
  context_tables_.clear();
  pids_.clear();
  pid_pages_.clear();
  free_pid_slots_.clear();
  std::fill(irte_used_.begin(), irte_used_.end(), false);
  std::fill(did_used_.begin(), did_used_.end(), false);
  mem_.reset();
  for (auto& d : devices_) {
    d->domain.reset();
    for (auto& s : d->vectors) s = vector_slot{};
    d->in_handover = false;
    d->state = fsm::device_state::running;
  }
  // The devices it named may still be doing DMA through the old tables: reset
  // them before the new (empty) tables replace the old ones.
  for (bdf b : handover::salvage_device_list(image)) {
    if (vdev* d = find_dev(b)) {
      reset_function(*d);
      d->state = fsm::device_state::error;
      queue_event(VFIO_KEEPALIVE_EVENT_HANDOVER_REJECTED, b, EPROTO, 0);
    }
  }
  (void)why;
}

void kernel_core::enumerate(const std::vector<bdf>& restored) {
  std::uint64_t next_bar = 0xE0000000ull;
  for (auto& d : devices_) {
    const bool kept = std::find(restored.begin(), restored.end(), d->address) != restored.end();
    const auto lo = cfg_read(*d, hw::pci::bar_offset(0), 4), hi = cfg_read(*d, hw::pci::bar_offset(1), 4);
    const std::uint64_t current = (std::uint64_t{hi} << 32) | (lo & hw::pci::bar_memory_address_mask);
    if (kept) {
      // Inherit the BAR the device is decoding: never reassign a live device.
      if (current != d->bar0) {
        fail_device(*d, VFIO_KEEPALIVE_EVENT_ENUM_FAILED, EIO);
      }
    } else {
      const auto bar = hw::pci::encode_bar64(next_bar, false);
      cfg_write(*d, hw::pci::bar_offset(0), 4, bar[0]);
      cfg_write(*d, hw::pci::bar_offset(1), 4, bar[1]);
      d->bar0 = next_bar;
    }
    next_bar += 0x100000;
  }
}

void kernel_core::shutdown() {
  gate_->close();
  std::lock_guard lock{mu_};
  bool frozen = false;
  for (auto& d : devices_) {
    if (d->state == fsm::device_state::frozen) {
      frozen = true;
      continue;
    }
    // Linux device_shutdown() during kexec: pci_clear_master().
    const auto cmd = cfg_read(*d, hw::pci::command, 2);
    cfg_write(*d, hw::pci::command, 2, cmd & ~std::uint32_t{hw::pci::command_bus_master});
  }
  if (!frozen) {
    // intel_iommu_shutdown(): translation and interrupt remapping off.
    plat_.vtd().set_root_table(hpa{0});
    plat_.vtd().set_irta(0);
  }
  plat_.vtd().set_cpu_sink(nullptr);
  processes_.clear();
  host_vectors_.clear();
}

}  // namespace keepalive::sim
