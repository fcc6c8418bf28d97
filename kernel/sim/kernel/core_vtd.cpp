// The Intel IOMMU / interrupt-remapping driver half and KVM's posted-interrupt
// half of the sim kernel: it writes root/context/second-level tables, IRTEs
// and descriptors into physical memory exactly as Linux would.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "core.hpp"
#include "keepalive/hw/msi.hpp"
#include "keepalive/hw/page_table.hpp"
#include "keepalive/hw/root_context.hpp"

namespace keepalive::sim {

eventfd_ref::~eventfd_ref() { ::close(fd_); }
void eventfd_ref::signal() const {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t r = ::write(fd_, &one, sizeof one);
}

bool irq_gate::call(apic_id cpu, vector v) {
  inflight_.fetch_add(1);
  kernel_core* core = core_.load();
  const bool taken = core != nullptr && core->on_interrupt(cpu, v);
  inflight_.fetch_sub(1);
  return taken;
}
void irq_gate::close() {
  core_.store(nullptr);
  while (inflight_.load() != 0) std::this_thread::yield();
}

status kernel_core::init_tables() {
  if (root_table_.value() == 0) {
    auto root = mem_.alloc_page();
    if (!root) return {errc::no_memory, "root table"};
    root_table_ = *root;
  }
  if (ir_table_.value() == 0) {
    auto ir = mem_.alloc_pages(hw::ir_table_max_bytes / page_size, true);
    if (!ir) return {errc::no_memory, "interrupt remapping table"};
    ir_table_ = *ir;
  }
  plat_.vtd().set_root_table(root_table_);
  plat_.vtd().set_irta(hw::irta_reg::make(ir_table_, hw::apic_mode::x2apic, 0xF).raw());
  return {};
}

hpa kernel_core::context_slot(bdf b, bool create) {
  auto it = context_tables_.find(b.bus());
  if (it == context_tables_.end()) {
    if (!create) return hpa{0};
    auto page = mem_.alloc_page();
    if (!page) return hpa{0};
    it = context_tables_.emplace(b.bus(), *page).first;
    hw::write_entry128(mem_, root_table_ + std::uint64_t{b.bus()} * hw::root_entry_bytes,
                       hw::root_entry::make(*page).words());
  }
  return it->second + std::uint64_t{b.devfn()} * hw::context_entry_bytes;
}

void kernel_core::attach(vdev& d, domain_obj& dom) {
  const hpa slot = context_slot(d.address, true);
  hw::write_entry128(mem_, slot, hw::context_entry::make(dom.root, dom.levels, dom.did).words());
  ++dom.attached;
}

void kernel_core::detach(vdev& d) {
  const hpa slot = context_slot(d.address, false);
  if (slot.value() != 0) hw::write_entry128(mem_, slot, {0, 0});
  if (d.domain && d.domain->attached > 0) --d.domain->attached;
}

std::shared_ptr<domain_obj> kernel_core::new_domain() {
  std::size_t did = 2;  // 0 reserved, 1 Linux's FLPT_DEFAULT_DID
  while (did < did_used_.size() && did_used_[did]) ++did;
  if (did >= did_used_.size()) return nullptr;
  auto dom = std::make_shared<domain_obj>();
  tracked_kmem tm{mem_, dom->pages};
  auto root = tm.alloc_page();
  if (!root) return nullptr;
  did_used_[did] = true;
  dom->did = domain_id{static_cast<std::uint16_t>(did)};
  dom->root = *root;
  dom->state = fsm::domain_state::attached;
  return dom;
}

void kernel_core::free_domain(domain_obj& dom) {
  for (hpa p : dom.pages) mem_.free_page(p);
  dom.pages.clear();
  dom.maps.clear();
  if (dom.did.value() < did_used_.size()) did_used_[dom.did.value()] = false;
  dom.state = fsm::domain_state::none;
}

std::optional<irte_index> kernel_core::alloc_irte() {
  for (std::size_t i = 1; i < irte_used_.size(); ++i)
    if (!irte_used_[i]) {
      irte_used_[i] = true;
      return irte_index{static_cast<std::uint16_t>(i)};
    }
  return std::nullopt;
}

std::uint64_t* kernel_core::irte_slot(irte_index i) const {
  return plat_.memory().word_ptr(ir_table_ + std::uint64_t{i.value()} * hw::irte_bytes);
}

void kernel_core::set_irte(irte_index i, const hw::irte& e) {
  hw::irte_store_atomic(irte_slot(i), e);
  plat_.vtd().invalidate_interrupt_entries();
}

void kernel_core::free_irte(irte_index i) {
  set_irte(i, hw::irte{});
  irte_used_[i.value()] = false;
}

void kernel_core::write_irte_remapped(vdev& d, vector_slot& s) {
  hw::remapped_irte_fields f{};
  f.present = true;
  f.vec = s.host_vector;
  f.destination = s.host_cpu;
  f.mode = hw::apic_mode::x2apic;
  f.sid = d.address.source_id();
  f.svt = hw::source_validation::sid_sq;
  set_irte(s.irte, hw::make_remapped(f));  // switching formats: atomic, as modify_irte()
}

void kernel_core::write_irte_posted(vdev& d, vector_slot& s) {
  hw::posted_irte_fields f{};
  f.present = true;
  f.vec = s.pir_bit;
  f.descriptor = s.pid->addr;
  f.sid = d.address.source_id();
  f.svt = hw::source_validation::sid_sq;
  set_irte(s.irte, hw::make_posted(f));
}

bool kernel_core::alloc_host_vector(vdev& d, unsigned index) {
  auto& s = d.vectors[index];
  if (auto it = host_vectors_.find(host_key(s.host_cpu, s.host_vector));
      s.host_vector.value() != 0 && it != host_vectors_.end() && it->second == std::pair{&d, index})
    return true;
  for (unsigned c = 0; c < cfg_.host_cpus; ++c)
    for (unsigned v = first_host_vector; v <= last_host_vector; ++v) {
      const apic_id cpu{cfg_.host_cpu.value() + c};
      const vector vec{static_cast<std::uint8_t>(v)};
      if (host_vectors_.count(host_key(cpu, vec))) continue;
      host_vectors_[host_key(cpu, vec)] = {&d, index};
      s.host_cpu = cpu;
      s.host_vector = vec;
      return true;
    }
  return false;
}

hw::posted_intr_desc& kernel_core::desc(const pid_obj& p) const {
  return *reinterpret_cast<hw::posted_intr_desc*>(plat_.memory().base() + p.addr.value());
}

std::shared_ptr<pid_obj> kernel_core::new_pid(apic_id ndst, bool sn) {
  reap_pids();
  if (free_pid_slots_.empty()) {
    auto page = mem_.alloc_page();
    if (!page) return nullptr;
    pid_pages_.push_back(*page);
    for (std::uint64_t off = page_size; off > 0; off -= sizeof(hw::posted_intr_desc))
      free_pid_slots_.push_back(*page + (off - sizeof(hw::posted_intr_desc)));
  }
  auto p = std::make_shared<pid_obj>();
  p->id = next_pid_id_++;
  p->addr = free_pid_slots_.back();
  free_pid_slots_.pop_back();
  p->ndst = ndst;
  auto& d = desc(*p);
  d.init_nonatomic(posted_notification_vector, hw::encode_destination(ndst, hw::apic_mode::x2apic), sn);
  pids_[p->addr.value()] = p;
  return p;
}

void kernel_core::reap_pids() {
  for (auto it = pids_.begin(); it != pids_.end();) {
    if (it->second.expired()) {
      std::memset(plat_.memory().base() + it->first, 0, sizeof(hw::posted_intr_desc));
      free_pid_slots_.push_back(hpa{it->first});
      it = pids_.erase(it);
    } else {
      ++it;
    }
  }
}

bool kernel_core::take_pir_bit(const pid_obj& p, vector v) {
  std::uint64_t* w = plat_.memory().word_ptr(p.addr + (v.value() / 64u) * 8u);
  const std::uint64_t bit = std::uint64_t{1} << (v.value() % 64u);
  return (std::atomic_ref<std::uint64_t>{*w}.fetch_and(~bit) & bit) != 0;
}

void kernel_core::deliver_posted(pid_obj& p) {
  const auto pending = desc(p).drain();
  for (vector v : pending) {
    auto it = p.irqfds.find(v.value());
    if (it != p.irqfds.end() && it->second) {
      it->second->signal();
      ++stats_.irqfd_signals;
    } else {
      ++stats_.spurious;
    }
  }
}

bool kernel_core::on_interrupt(apic_id cpu, vector v) {
  std::lock_guard lock{mu_};
  if (v == posted_notification_vector) {
    ++stats_.notifications;
    for (auto& [addr, weak] : pids_) {
      auto p = weak.lock();
      if (!p || p->parking || p->preserved || p->ndst != cpu) continue;
      if (desc(*p).control().on()) deliver_posted(*p);
    }
    return true;
  }
  auto it = host_vectors_.find(host_key(cpu, v));
  if (it == host_vectors_.end()) {
    ++stats_.spurious;
    return true;
  }
  auto& [dev, index] = it->second;
  auto& slot = dev->vectors[index];
  if (slot.state == fsm::vector_state::preserved) {
    // Sent in remapped format just before keepalive re-pointed the IRTE: keep it.
    if (slot.pid)
      (void)desc(*slot.pid).post(slot.pir_bit, false);
    else
      slot.latched = true;
    return true;
  }
  if (slot.trigger) {
    slot.trigger->signal();
    ++stats_.eventfd_signals;
  } else {
    ++stats_.spurious;
  }
  return true;
}

}  // namespace keepalive::sim
