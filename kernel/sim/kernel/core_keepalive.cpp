// Keepalive: enter/leave, the keepalive close (preserve), reconnect + drain on
// reclaim, the control node, stage 2 (prepare/abort; boot adopts), and KVM's
// posted-interrupt side (vCPU descriptors, irq bypass).
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>

#include <fmt/format.h>

#include "core.hpp"
#include "handover.hpp"
#include "keepalive/hw/msi.hpp"
#include "keepalive/hw/page_table.hpp"
#include "keepalive/hw/pci.hpp"

namespace keepalive::sim {
namespace {
long neg(errc e) { return -static_cast<long>(e); }
token token_of(const __u8 (&t)[VFIO_KEEPALIVE_TOKEN_SIZE]) {
  token::bytes b{};
  std::memcpy(b.data(), t, b.size());
  return token{b};
}
bool advance(fsm::vector_state& s, fsm::vector_state to) {
  if (!fsm::allowed(s, to)) return false;
  s = to;
  return true;
}
}  // namespace

// ------------------------------------------------------------ vectors

long kernel_core::set_irqs(vdev& d, vfio_irq_set& h, std::span<const std::int32_t> fds) {
  for (std::uint32_t k = 0; k < fds.size(); ++k) {
    const unsigned i = h.start + k;
    auto& s = d.vectors[i];
    if (fds[k] < 0) {
      if (s.state != fsm::vector_state::preserved) free_vector(d, i);
      continue;
    }
    const int dupfd = ::dup(fds[k]);
    if (dupfd < 0) return -EBADF;
    auto trigger = std::make_shared<eventfd_ref>(dupfd);
    using enum fsm::vector_state;
    if (s.state == free) {
      auto irte = alloc_irte();
      if (!irte) return neg(errc::no_memory);
      if (!alloc_host_vector(d, i)) {
        irte_used_[irte->value()] = false;
        return neg(errc::no_memory);
      }
      s.irte = *irte;
      s.trigger = trigger;
      write_irte_remapped(d, s);
      const auto ctrl_off = [&] {
        auto read8 = [&](std::uint16_t off) { return static_cast<std::uint8_t>(cfg_read(d, off, 1)); };
        return *hw::pci::find_capability(read8, hw::pci::cap_id::msix) + hw::msix_cap::message_control;
      }();
      const auto ctrl = cfg_read(d, static_cast<std::uint16_t>(ctrl_off), 2);
      if (!(ctrl & hw::msix_cap::control_enable))
        cfg_write(d, static_cast<std::uint16_t>(ctrl_off), 2, ctrl | hw::msix_cap::control_enable);
      program_msix(d, i, s.irte, false);
      (void)advance(s.state, remapped);
    } else if (s.state == preserved) {
      // Reclaim: the SAME IRTE, now remapped to this owner's eventfd; then
      // whatever was posted while nobody owned the device is delivered.
      if (!alloc_host_vector(d, i)) return neg(errc::no_memory);
      s.trigger = trigger;
      (void)advance(s.state, reconnected);
      write_irte_remapped(d, s);
      bool pending = std::exchange(s.latched, false);
      if (s.pid) pending = take_pir_bit(*s.pid, s.pir_bit) || pending;
      s.pid.reset();
      if (pending) {
        s.trigger->signal();
        ++stats_.preserved_drained;
        ++stats_.eventfd_signals;
      }
      if (std::exchange(s.masked_for_keepalive, false)) mask_msix(d, i, false);  // the PBA fires now
      (void)advance(s.state, remapped);
    } else {
      s.trigger = trigger;  // an owned vector gets a new eventfd
    }
  }
  return 0;
}

long kernel_core::bypass(int pid, file& vm, const ka_sim_irq_bypass& r) {
  auto& fds = processes_[pid];
  auto dit = fds.find(r.device_fd);
  if (dit == fds.end() || dit->second->kind != file_kind::device) return -EBADF;
  vdev& d = *dit->second->dev;
  if (r.msix_index >= d.vectors.size()) return neg(errc::invalid);
  auto& s = d.vectors[r.msix_index];
  using enum fsm::vector_state;
  if (r.flags & KA_SIM_BYPASS_DISCONNECT) {
    if (s.state != posted) return neg(errc::not_found);
    if (s.pid) s.pid->irqfds.erase(s.pir_bit.value());
    s.pid.reset();
    s.irqfd.reset();
    write_irte_remapped(d, s);
    (void)advance(s.state, remapped);
    return 0;
  }
  if (!plat_.posted_interrupts()) return neg(errc::not_supported);
  if (r.guest_vector > 255) return neg(errc::invalid);
  std::shared_ptr<pid_obj> target;
  for (auto& p : vm.pids)
    if (p->id == r.pid_id) target = p;
  if (!target) return neg(errc::not_found);
  if (s.state != remapped && s.state != preserved && s.state != posted) return neg(errc::not_found);
  const int dupfd = ::dup(r.irqfd);
  if (dupfd < 0) return -EBADF;
  auto irqfd = std::make_shared<eventfd_ref>(dupfd);
  const vector gv{static_cast<std::uint8_t>(r.guest_vector)};
  target->irqfds[gv.value()] = irqfd;
  if (s.state == preserved) {
    auto old = s.pid;
    const vector old_bit = s.pir_bit;
    const bool latched = std::exchange(s.latched, false);
    s.pid = target;
    s.pir_bit = gv;
    s.irqfd = irqfd;
    (void)advance(s.state, reconnected);
    write_irte_posted(d, s);  // same IRTE index, new descriptor
    // Drain: what the old descriptor holds for this vector moves to the new one.
    if ((old && take_pir_bit(*old, old_bit)) || latched) {
      ++stats_.preserved_drained;
      if (desc(*target).post(gv, false).notify) deliver_posted(*target);
    }
    if (std::exchange(s.masked_for_keepalive, false)) mask_msix(d, r.msix_index, false);
    (void)advance(s.state, posted);
    return 0;
  }
  if (s.pid && s.pid != target) s.pid->irqfds.erase(s.pir_bit.value());
  s.pid = target;
  s.pir_bit = gv;
  s.irqfd = irqfd;
  write_irte_posted(d, s);
  if (s.state == remapped) (void)advance(s.state, posted);
  return 0;
}

errc kernel_core::op_create_pid(vm_ctx& c, ka_sim_pid& r) {
  auto p = c.k.new_pid(apic_id{r.host_apic_id}, false);
  if (!p) return errc::no_memory;
  p->vm = c.vm.id;
  c.vm.pids.push_back(p);
  r.out_pid_id = p->id;
  r.out_pid_hpa = p->addr.value();
  return errc::ok;
}

errc kernel_core::op_bypass(vm_ctx& c, ka_sim_irq_bypass& r) {
  const long rc = c.k.bypass(c.pid, c.vm, r);
  return rc < 0 ? static_cast<errc>(-rc) : errc::ok;
}

long kernel_core::vm_ioctl(int pid, file& vm, unsigned long cmd, void* arg) {
  vm_ctx ctx{*this, vm, pid};
  static constexpr std::array<abi::ioctl_op<vm_ctx>, 2> ops{
      abi::make_op<vm_ctx, ka_sim_pid, &kernel_core::op_create_pid>(KA_SIM_CREATE_PID, "KA_SIM_CREATE_PID"),
      abi::make_op<vm_ctx, ka_sim_irq_bypass, &kernel_core::op_bypass>(KA_SIM_IRQ_BYPASS, "KA_SIM_IRQ_BYPASS"),
  };
  return dispatch_user(std::span<const abi::ioctl_op<vm_ctx>>{ops}, ctx, cmd, arg);
}

// ------------------------------------------------------------ device lifecycle

void kernel_core::preserve_device(vdev& d) {
  using enum fsm::vector_state;
  std::map<const pid_obj*, std::shared_ptr<pid_obj>> kept;  // vCPU descriptor -> its keepalive copy
  for (unsigned i = 0; i < d.vectors.size(); ++i) {
    auto& s = d.vectors[i];
    if (s.state == free || s.state == preserved) continue;
    if (d.irq_mode == VFIO_KEEPALIVE_IRQ_MASKED) {
      mask_msix(d, i, true);  // the PBA latches from here on
      s.masked_for_keepalive = true;
      s.pid.reset();
    } else if (s.state == posted || s.state == reconnected) {
      // The vCPU's descriptor dies with its VM: posting moves to a descriptor
      // keepalive owns (SN set: record, notify nobody). IRTE first (its
      // flush waits out any post that read the old entry), then the bit
      // already posted moves, so nothing lands behind the move.
      auto& copy = kept[s.pid.get()];
      if (!copy) {
        copy = new_pid(s.pid->ndst, true);
        if (copy) copy->preserved = true;
      }
      if (copy) {
        const auto from = std::exchange(s.pid, copy);
        from->irqfds.erase(s.pir_bit.value());
        write_irte_posted(d, s);
        if (take_pir_bit(*from, s.pir_bit)) (void)desc(*copy).post(s.pir_bit, false);
      } else {  // out of memory: the vCPU's descriptor itself is held
        desc(*s.pid).set_sn();
        s.pid->preserved = true;
      }
    } else {  // remapped: park it in a keepalive descriptor
      if (!d.parking) {
        d.parking = new_pid(cfg_.host_cpu, true);
        d.parking->parking = d.parking->preserved = true;
      }
      s.pid = d.parking;
      s.pir_bit = vector{static_cast<std::uint8_t>(i)};
      write_irte_posted(d, s);
    }
    s.trigger.reset();
    s.irqfd.reset();
    (void)advance(s.state, preserved);
  }
  if (d.domain) d.domain->state = fsm::domain_state::preserved;
  d.state = fsm::device_state::ownerless;
}

void kernel_core::forget_keepalive(vdev& d) {
  for (unsigned i = 0; i < d.vectors.size(); ++i) free_vector(d, i);
  d.parking.reset();
  cfg_write(d, hw::pci::command, 2, 0);
  reset_function(d);
  if (d.domain) {
    detach(d);
    if (d.domain->attached == 0) free_domain(*d.domain);
    d.domain.reset();
  }
  d.owner_token = token{};
  d.irq_mode = VFIO_KEEPALIVE_IRQ_NONE;
  d.in_handover = false;
  reap_pids();
}

void kernel_core::fail_device(vdev& d, std::uint32_t event, int err) {
  forget_keepalive(d);
  d.state = fsm::device_state::error;
  queue_event(event, d.address, err, 0);
}

void kernel_core::queue_event(std::uint32_t type, bdf b, int err, std::uint64_t data) {
  events_.push_back({event_seq_++, type, b, static_cast<std::uint32_t>(err), data});
  while (events_.size() > 1024) events_.pop_front();
}

// ------------------------------------------------------------ device ioctls

errc kernel_core::ka_enter(vdev& d, vfio_keepalive_enter& r) {
  if (const errc e = fsm::check(d.state, fsm::device_state::kept_alive); e != errc::ok) return e;
  const token t = token_of(r.token);
  if (t.is_nil()) return errc::invalid;
  std::uint32_t mode = VFIO_KEEPALIVE_IRQ_POSTED;
  if (!plat_.posted_interrupts()) {
    if (!(r.flags & VFIO_KEEPALIVE_ENTER_ALLOW_MASKING)) return errc::not_supported;
    mode = VFIO_KEEPALIVE_IRQ_MASKED;
  }
  std::uint32_t n = 0;
  for (auto& s : d.vectors) n += s.state != fsm::vector_state::free;
  d.owner_token = t;
  d.irq_mode = mode;
  d.state = fsm::device_state::kept_alive;
  r.out_irq_mode = mode;
  r.out_nr_vectors = n;
  return errc::ok;
}

errc kernel_core::ka_leave(vdev& d, vfio_keepalive_leave& r) {
  // Only the "leave" arcs: the other arcs into RUNNING are resets (control node).
  if (d.state != fsm::device_state::kept_alive && d.state != fsm::device_state::reclaimed) return errc::busy;
  if (token_of(r.token) != d.owner_token) return errc::access_denied;
  for (unsigned i = 0; i < d.vectors.size(); ++i)
    if (d.vectors[i].state == fsm::vector_state::preserved) free_vector(d, i);  // not set up again
  d.parking.reset();
  if (d.domain) d.domain->state = fsm::domain_state::attached;
  d.owner_token = token{};
  d.irq_mode = VFIO_KEEPALIVE_IRQ_NONE;
  d.state = fsm::device_state::running;
  reap_pids();
  return errc::ok;
}

errc kernel_core::ka_status(vdev& d, vfio_keepalive_status& r) {
  r.out_state = static_cast<std::uint32_t>(d.state);
  r.out_irq_mode = d.irq_mode;
  std::uint32_t n = 0, pending = 0;
  for (auto& s : d.vectors) {
    if (s.state == fsm::vector_state::free) continue;
    ++n;
    if (s.state != fsm::vector_state::preserved) continue;
    const unsigned i = static_cast<unsigned>(&s - d.vectors.data());
    const bool in_pba = s.masked_for_keepalive &&
                        ((d.fn->mmio_read(0, KA_NIC_MSIX_PBA_OFF + (i / 64u) * 8u, 8) >> (i % 64u)) & 1u) != 0;
    if (s.latched || in_pba || (s.pid && desc(*s.pid).pending().test(s.pir_bit))) ++pending;
  }
  r.out_nr_vectors = d.state == fsm::device_state::running ? 0 : n;
  r.out_nr_pending = pending;
  r.out_domain_id = d.domain ? d.domain->did.value() : 0;
  r.out_dma_faults = plat_.vtd().dma_faults_for(d.address.source_id());
  return errc::ok;
}

errc kernel_core::ka_get_iommufd(const vdev& d, vfio_keepalive_iommufd&) {
  using enum fsm::device_state;
  // The sim has no iommufd, so OWNERLESS (always parked through its group) is ENOENT.
  switch (d.state) {
    case running:
    case ownerless:
    case restored: return errc::not_found;
    case kept_alive:
    case reclaimed:
    case frozen:
    case error: return errc::busy;
  }
  return errc::busy;
}

// ------------------------------------------------------------ control node

long kernel_core::control_ioctl(file&, unsigned long cmd, void* arg) {
  ctl_ctx ctx{*this};
  static constexpr std::array<abi::ioctl_op<ctl_ctx>, 6> ops{
      abi::make_op<ctl_ctx, vfio_keepalive_info, &kernel_core::op_info>(VFIO_KEEPALIVE_GET_INFO, "GET_INFO"),
      abi::make_op<ctl_ctx, vfio_keepalive_list, &kernel_core::op_list>(VFIO_KEEPALIVE_LIST_DEVICES, "LIST_DEVICES"),
      abi::make_op<ctl_ctx, vfio_keepalive_stage2, &kernel_core::op_prepare>(VFIO_KEEPALIVE_STAGE2_PREPARE, "STAGE2_PREPARE"),
      abi::make_op<ctl_ctx, vfio_keepalive_stage2, &kernel_core::op_abort>(VFIO_KEEPALIVE_STAGE2_ABORT, "STAGE2_ABORT"),
      abi::make_op<ctl_ctx, vfio_keepalive_event, &kernel_core::op_event>(VFIO_KEEPALIVE_READ_EVENT, "READ_EVENT"),
      abi::make_op<ctl_ctx, vfio_keepalive_reset, &kernel_core::op_reset>(VFIO_KEEPALIVE_RESET_DEVICE, "RESET_DEVICE"),
  };
  return dispatch_user(std::span<const abi::ioctl_op<ctl_ctx>>{ops}, ctx, cmd, arg);
}

errc kernel_core::ka_info(vfio_keepalive_info& r) {
  r.out_version = VFIO_KEEPALIVE_ABI_VERSION;
  r.out_caps = VFIO_KEEPALIVE_CAP_MSI_MASKING | VFIO_KEEPALIVE_CAP_STAGE2 | VFIO_KEEPALIVE_CAP_EVENTS |
               (plat_.posted_interrupts() ? VFIO_KEEPALIVE_CAP_POSTED_INTR : 0u);
  std::uint32_t n = 0;
  for (auto& d : devices_) n += d->state != fsm::device_state::running;
  r.out_nr_devices = n;
  r.out_generation = stats_.generation;
  return errc::ok;
}

errc kernel_core::ka_list(vfio_keepalive_list& r) {
  std::vector<vfio_keepalive_device_entry> rows;
  for (auto& d : devices_) {
    if (d->state == fsm::device_state::running) continue;
    vfio_keepalive_status st{};
    (void)ka_status(*d, st);
    rows.push_back({d->address.packed(), st.out_state, st.out_irq_mode, st.out_nr_vectors, st.out_nr_pending,
                    st.out_domain_id});
  }
  if (r.nr_entries < rows.size()) {
    r.nr_entries = static_cast<std::uint32_t>(rows.size());
    return errc::overflow;
  }
  if (!rows.empty() && r.entries_uptr == 0) return errc::fault;
  if (!rows.empty())
    std::memcpy(reinterpret_cast<void*>(static_cast<std::uintptr_t>(r.entries_uptr)), rows.data(),
                rows.size() * sizeof rows[0]);
  r.nr_entries = static_cast<std::uint32_t>(rows.size());
  return errc::ok;
}

errc kernel_core::ka_prepare(vfio_keepalive_stage2& r) {
  using enum fsm::device_state;
  if (stage2_prepared_) return errc::busy;
  for (auto& d : devices_)
    if (d->state != running && d->state != error && fsm::check(d->state, frozen) != errc::ok) return errc::busy;
  handover::image img;
  img.generation = stats_.generation;
  img.event_seq = event_seq_;
  img.iommu.root_table = root_table_;
  img.iommu.irta = plat_.vtd().irta();
  std::set<std::uint64_t> pages;
  pages.insert(root_table_.value());
  for (auto& [bus, t] : context_tables_) pages.insert(t.value());
  for (std::uint64_t off = 0; off < hw::ir_table_max_bytes; off += page_size) pages.insert(ir_table_.value() + off);
  std::uint32_t n = 0;
  for (auto& d : devices_) {
    if (d->state != ownerless && d->state != restored) continue;
    if (!d->domain) return errc::busy;  // a kept-alive device always has its domain
    handover::device_rec rec;
    rec.device = d->address;
    rec.state = VFIO_KEEPALIVE_STATE_FROZEN;
    rec.owner = d->owner_token;
    rec.did = d->domain->did;
    rec.levels = static_cast<std::uint8_t>(d->domain->levels);
    rec.irq_mode = static_cast<std::uint8_t>(d->irq_mode);
    rec.sl_root = d->domain->root;
    for (unsigned b = 0; b < 6; ++b) {
      rec.bar[b] = b == 0 ? d->bar0 : 0;
      rec.bar_size[b] = d->fn->bar_size(b);
    }
    rec.command = static_cast<std::uint16_t>(cfg_read(*d, hw::pci::command, 2));
    auto read8 = [&](std::uint16_t off) { return static_cast<std::uint8_t>(cfg_read(*d, off, 1)); };
    if (auto cap = hw::pci::find_capability(read8, hw::pci::cap_id::msix))
      rec.msix_ctrl = static_cast<std::uint16_t>(cfg_read(*d, static_cast<std::uint16_t>(*cap + hw::msix_cap::message_control), 2));
    hw::for_each_table(mem_, d->domain->root, d->domain->levels, [&](hpa t, unsigned) { pages.insert(t.value()); });
    for (unsigned i = 0; i < d->vectors.size(); ++i) {
      const auto& s = d->vectors[i];
      if (s.state != fsm::vector_state::preserved) continue;
      handover::vector_rec v;
      v.msix = msix_index{static_cast<std::uint16_t>(i)};
      v.irte = s.irte;
      v.posted = static_cast<bool>(s.pid);
      v.guest_vector = s.pir_bit;
      v.pid = s.pid ? s.pid->addr : hpa{0};
      if (s.pid) pages.insert(s.pid->addr.value() & ~(page_size - 1));
      rec.vectors.push_back(v);
    }
    img.devices.push_back(std::move(rec));
    ++n;
  }
  // Merge pages into ranges.
  for (auto it = pages.begin(); it != pages.end();) {
    std::uint64_t start = *it, end = start + page_size;
    for (++it; it != pages.end() && *it == end; ++it) end += page_size;
    img.ranges.push_back({hpa{start}, end - start});
  }
  const auto bytes = handover::encode(img);
  if (bytes.size() > cfg_.map.handover_bytes()) return errc::no_memory;
  std::memcpy(plat_.memory().base() + cfg_.map.handover_start(), bytes.data(), bytes.size());
  for (auto& d : devices_)
    if (d->state == ownerless || d->state == restored) d->state = frozen;
  stage2_prepared_ = true;
  r.out_nr_devices = n;
  r.out_image_bytes = bytes.size();
  return errc::ok;
}

errc kernel_core::ka_abort(vfio_keepalive_stage2& r) {
  if (!stage2_prepared_) return errc::busy;
  std::uint32_t n = 0;
  for (auto& d : devices_)
    if (d->state == fsm::device_state::frozen) {
      d->state = fsm::device_state::ownerless;
      ++n;
    }
  std::memset(plat_.memory().base() + cfg_.map.handover_start(), 0, cfg_.map.handover_bytes());
  stage2_prepared_ = false;
  r.out_nr_devices = n;
  r.out_image_bytes = 0;
  return errc::ok;
}

errc kernel_core::ka_event(vfio_keepalive_event& r) {
  if (events_.empty()) return errc::again;
  const auto e = events_.front();
  events_.pop_front();
  r.out_seq = e.seq;
  r.out_type = e.type;
  r.out_bdf = e.device.packed();
  r.out_errno = e.err;
  r.out_data = e.data;
  return errc::ok;
}

errc kernel_core::ka_reset(vfio_keepalive_reset& r) {
  vdev* d = find_dev(bdf::from_packed(r.bdf));
  if (!d) return errc::not_found;
  // Only the reset arcs: KEPT_ALIVE/RECLAIMED -> RUNNING are the owner's "leave".
  if (d->state == fsm::device_state::kept_alive || d->state == fsm::device_state::reclaimed) return errc::busy;
  if (const errc e = fsm::check(d->state, fsm::device_state::running); e != errc::ok) return e;
  forget_keepalive(*d);
  d->state = fsm::device_state::running;
  queue_event(VFIO_KEEPALIVE_EVENT_RESET, d->address, 0, 0);
  return errc::ok;
}

kernel_stats kernel_core::stats() const {
  std::lock_guard lock{mu_};
  return stats_;
}

std::string kernel_core::describe() const {
  std::lock_guard lock{mu_};
  std::string out = fmt::format("root table {:#x}  IR table {:#x}  kernel pages in use {}  generation {}\n",
                                root_table_.value(), ir_table_.value(), mem_.pages_in_use(), stats_.generation);
  for (auto& d : devices_) {
    out += fmt::format("{}  state {:<10} irq {} domain {} token {}\n", d->address.to_string(), fsm::name(d->state),
                       d->irq_mode, d->domain ? d->domain->did.value() : 0,
                       d->owner_token.is_nil() ? std::string{"-"} : d->owner_token.to_string());
    for (unsigned i = 0; i < d->vectors.size(); ++i) {
      const auto& s = d->vectors[i];
      if (s.state == fsm::vector_state::free) continue;
      const auto e = hw::irte_load(irte_slot(s.irte));
      out += fmt::format("  msix {} {:<11} irte {:>5} {} vec {:#04x}", i, fsm::name(s.state), s.irte.value(),
                         e.is_posted() ? "posted  " : "remapped", e.vector().value());
      if (e.is_posted()) {
        const auto c = desc(*s.pid).control();
        out += fmt::format(" pid {:#x} ON {} SN {} NV {:#04x} NDST {} pending {}", e.pda().value(), c.on(), c.sn(),
                           c.nv().value(), c.ndst(), desc(*s.pid).pending().count());
      }
      out += '\n';
    }
  }
  return out;
}

}  // namespace keepalive::sim
