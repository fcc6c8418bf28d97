// The VFIO subset (type1 container, groups, vfio-pci device fds) and the
// process side (fd tables, exit) of the sim kernel.
#include <unistd.h>

#include <charconv>
#include <cstring>

#include <fmt/format.h>

#include "core.hpp"
#include "keepalive/hw/msi.hpp"
#include "keepalive/hw/page_table.hpp"
#include "keepalive/hw/pci.hpp"

namespace keepalive::sim {
namespace {
constexpr unsigned region_shift = 40;  // VFIO_PCI_OFFSET_SHIFT
long neg(errc e) { return -static_cast<long>(e); }
template <typename T>
bool argsz_ok(const T& v, std::size_t minsz) {
  return v.argsz >= minsz;
}
}  // namespace

// ---------------------------------------------------------------- process side

result<int> kernel_core::open(int pid, std::string_view path) {
  std::lock_guard lock{mu_};
  auto& fds = processes_[pid];
  std::shared_ptr<file> f;
  if (path == "/dev/vfio/vfio") {
    f = std::make_shared<file>(file_kind::container);
  } else if (path == VFIO_KEEPALIVE_CTL_PATH) {
    if (cfg_.mode == kernel_mode::baseline) return {errc::not_found, std::string{path}};
    f = std::make_shared<file>(file_kind::control);
  } else if (path == "/dev/kvm") {
    f = std::make_shared<file>(file_kind::vm);
  } else if (path.starts_with("/dev/vfio/")) {
    unsigned group = 0;
    const auto num = path.substr(10);
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), group);
    if (ec != std::errc{} || p != num.data() + num.size() || group > 0xffff || !find_dev(bdf::from_packed(group)))
      return {errc::not_found, std::string{path}};
    for (auto& [other_pid, table] : processes_)
      for (auto& [n, of] : table)
        if (of->kind == file_kind::group && of->group == group) return {errc::busy, "group already open"};
    f = std::make_shared<file>(file_kind::group);
    f->group = group;
  } else {
    return {errc::not_found, std::string{path}};
  }
  f->id = next_file_id_++;
  int fd = 3;
  while (fds.count(fd)) ++fd;
  fds[fd] = f;
  return fd;
}

errc kernel_core::close(int pid, int fd) {
  std::lock_guard lock{mu_};
  auto pit = processes_.find(pid);
  if (pit == processes_.end()) return errc::bad_fd;
  auto it = pit->second.find(fd);
  if (it == pit->second.end()) return errc::bad_fd;
  auto f = it->second;
  pit->second.erase(it);
  if (f.use_count() == 1) close_file(*f);
  reap_pids();
  return errc::ok;
}

void kernel_core::exit_process(int pid) {
  std::lock_guard lock{mu_};
  auto pit = processes_.find(pid);
  if (pit == processes_.end()) return;
  auto fds = std::move(pit->second);
  processes_.erase(pit);
  // A dying process releases devices before its VMs and containers.
  for (file_kind k : {file_kind::device, file_kind::vm, file_kind::group, file_kind::container, file_kind::control})
    for (auto& [n, f] : fds)
      if (f->kind == k && f.use_count() == 1) close_file(*f);
  fds.clear();
  reap_pids();
}

// A container's teardown runs when its last reference goes, whoever holds it:
// the fd table, a group, or a device opened through it.
void kernel_core::drop_container(std::shared_ptr<file>& c) {
  if (c && c.use_count() == 1) close_file(*c);
  c.reset();
}

void kernel_core::close_file(file& f) {
  switch (f.kind) {
    case file_kind::device: {
      vdev& d = *f.dev;
      d.owner = nullptr;
      using enum fsm::device_state;
      if (cfg_.mode == kernel_mode::keepalive && (d.state == kept_alive || d.state == reclaimed))
        preserve_device(d);
      else if (d.state == running)
        release_device(d);
      drop_container(f.container);
      break;
    }
    case file_kind::container:
      if (f.domain && f.domain->attached == 0 && f.domain->state != fsm::domain_state::preserved) {
        bool held = false;
        for (auto& d : devices_) held = held || d->domain == f.domain;
        if (!held) free_domain(*f.domain);
      }
      f.domain.reset();
      break;
    case file_kind::vm:
      for (auto& p : f.pids) {
        p->vm = -1;
        if (!p->preserved) p->irqfds.clear();
      }
      f.pids.clear();
      break;
    case file_kind::group:
      drop_container(f.container);
      break;
    case file_kind::control:
      break;
  }
}

result<std::size_t> kernel_core::rw(int pid, int fd, std::span<std::byte> buf, std::uint64_t offset, bool write) {
  std::lock_guard lock{mu_};
  auto pit = processes_.find(pid);
  if (pit == processes_.end() || !pit->second.count(fd)) return {errc::bad_fd, "rw"};
  auto& f = *pit->second[fd];
  if (f.kind != file_kind::device) return {errc::invalid, "rw on a non-device fd"};
  vdev& d = *f.dev;
  const unsigned region = static_cast<unsigned>(offset >> region_shift);
  const std::uint64_t off = offset & ((std::uint64_t{1} << region_shift) - 1);
  if (region == VFIO_PCI_CONFIG_REGION_INDEX) {
    if (off + buf.size() > hw::pci::extended_config_space_size) return {errc::invalid, "config access beyond 4 KiB"};
    for (std::size_t i = 0; i < buf.size();) {
      const unsigned n = (buf.size() - i >= 4 && (off + i) % 4 == 0) ? 4u : 1u;
      const auto at = static_cast<std::uint16_t>(off + i);
      if (write) {
        std::uint32_t v = 0;
        std::memcpy(&v, buf.data() + i, n);
        cfg_write(d, at, n, v);
      } else {
        const std::uint32_t v = cfg_read(d, at, n);
        std::memcpy(buf.data() + i, &v, n);
      }
      i += n;
    }
    return buf.size();
  }
  if (region == VFIO_PCI_BAR0_REGION_INDEX) {
    const unsigned n = static_cast<unsigned>(buf.size());
    if ((n != 4 && n != 8) || off % n != 0 || off + n > d.fn->bar_size(0)) return {errc::invalid, "BAR0 access"};
    // The MSI-X table and PBA belong to VFIO (SET_IRQS), not to the user.
    if (off >= KA_NIC_MSIX_TABLE_OFF && off < KA_NIC_MSIX_PBA_OFF + 0x100) {
      if (!write) std::memset(buf.data(), 0, n);
      return buf.size();
    }
    if (write) {
      std::uint64_t v = 0;
      std::memcpy(&v, buf.data(), n);
      d.fn->mmio_write(0, off, n, v);
    } else {
      const std::uint64_t v = d.fn->mmio_read(0, off, n);
      std::memcpy(buf.data(), &v, n);
    }
    return buf.size();
  }
  return {errc::invalid, fmt::format("region {}", region)};
}

long kernel_core::ioctl(int pid, int fd, unsigned long cmd, void* arg) {
  std::lock_guard lock{mu_};
  auto pit = processes_.find(pid);
  if (pit == processes_.end() || !pit->second.count(fd)) return neg(errc::bad_fd);
  auto f = pit->second[fd];
  switch (f->kind) {
    case file_kind::container: return container_ioctl(*f, cmd, arg);
    case file_kind::group: return group_ioctl(pid, *f, cmd, arg);
    case file_kind::device: return device_ioctl(*f, cmd, arg);
    case file_kind::control: return control_ioctl(*f, cmd, arg);
    case file_kind::vm: return vm_ioctl(pid, *f, cmd, arg);
  }
  return neg(errc::not_tty);
}

// ---------------------------------------------------------------- container

long kernel_core::container_ioctl(file& c, unsigned long cmd, void* arg) {
  switch (cmd) {
    case VFIO_GET_API_VERSION: return VFIO_API_VERSION;
    case VFIO_CHECK_EXTENSION: {
      const auto ext = reinterpret_cast<std::uintptr_t>(arg);
      return ext == VFIO_TYPE1_IOMMU || ext == VFIO_TYPE1v2_IOMMU || ext == VFIO_UPDATE_VADDR ? 1 : 0;
    }
    case VFIO_SET_IOMMU: {
      const auto type = reinterpret_cast<std::uintptr_t>(arg);
      if (type != VFIO_TYPE1_IOMMU && type != VFIO_TYPE1v2_IOMMU) return neg(errc::invalid);
      bool has_group = false;
      for (auto& [p, t] : processes_)
        for (auto& [n, f] : t) has_group = has_group || (f->kind == file_kind::group && f->container.get() == &c);
      if (!has_group || c.type1) return neg(errc::invalid);
      c.type1 = true;
      return 0;
    }
    case VFIO_IOMMU_MAP_DMA: {
      auto& m = *static_cast<vfio_iommu_type1_dma_map*>(arg);
      if (!argsz_ok(m, offsetof(vfio_iommu_type1_dma_map, size) + sizeof m.size)) return neg(errc::invalid);
      const std::uint32_t known = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | VFIO_DMA_MAP_FLAG_VADDR;
      if (!c.type1 || (m.flags & ~known) || m.size == 0 || (m.iova | m.size | m.vaddr) % page_size) return neg(errc::invalid);
      if (m.vaddr < cfg_.map.guest_start() || m.vaddr + m.size > plat_.memory().size() || m.vaddr + m.size < m.vaddr)
        return neg(errc::fault);
      if (m.flags & VFIO_DMA_MAP_FLAG_VADDR) {
        // CPR: a new process re-points an existing mapping at its own address.
        if (!c.domain) return neg(errc::invalid);
        auto it = c.domain->maps.find(m.iova);
        if (it == c.domain->maps.end() || it->second.size != m.size || it->second.target.value() != m.vaddr)
          return neg(errc::invalid);
        return 0;
      }
      if (!c.domain) {
        c.domain = new_domain();
        if (!c.domain) return neg(errc::no_memory);
      }
      auto& dom = *c.domain;
      if (dom.state == fsm::domain_state::adopted) {
        // Adopting a preserved domain: a request for exactly what is already
        // mapped succeeds without touching the tables (after kexec the
        // bookkeeping is per leaf: coalesce it into the caller's mapping).
        std::uint64_t cur = m.iova;
        for (auto it = dom.maps.find(cur); it != dom.maps.end() && it->first == cur &&
                                           it->second.target.value() == m.vaddr + (cur - m.iova) &&
                                           cur + it->second.size <= m.iova + m.size;
             it = dom.maps.find(cur))
          cur += it->second.size;
        if (cur == m.iova + m.size) {
          dom.maps.erase(dom.maps.lower_bound(m.iova), dom.maps.lower_bound(cur));
          dom.maps[m.iova] = {m.size, hpa{m.vaddr}, m.flags};
          return 0;
        }
      }
      hw::perm p = hw::perm::none;
      if (m.flags & VFIO_DMA_MAP_FLAG_READ) p = p | hw::perm::read;
      if (m.flags & VFIO_DMA_MAP_FLAG_WRITE) p = p | hw::perm::write;
      if (p == hw::perm::none) return neg(errc::invalid);
      tracked_kmem tm{mem_, dom.pages};
      auto st = hw::map(tm, dom.root, dom.levels, iova{m.iova}, hpa{m.vaddr}, m.size, p, true);
      if (!st) return st.code() == errc::busy ? -EEXIST : neg(st.code());
      dom.maps[m.iova] = {m.size, hpa{m.vaddr}, m.flags};
      return 0;
    }
    case VFIO_IOMMU_UNMAP_DMA: {
      auto& u = *static_cast<vfio_iommu_type1_dma_unmap*>(arg);
      if (!argsz_ok(u, offsetof(vfio_iommu_type1_dma_unmap, size) + sizeof u.size)) return neg(errc::invalid);
      if (!c.type1 || (u.flags & ~std::uint32_t{VFIO_DMA_UNMAP_FLAG_VADDR}) || (u.iova | u.size) % page_size)
        return neg(errc::invalid);
      if (!c.domain) {
        u.size = 0;
        return 0;
      }
      auto& dom = *c.domain;
      const std::uint64_t end = u.iova + u.size;
      // Type1 v2: a mapping may not be split. Only the mapping that starts
      // before the range and the last one inside it can straddle an edge.
      if (auto it = dom.maps.lower_bound(u.iova); it != dom.maps.begin()) {
        const auto& [start, mp] = *std::prev(it);
        if (start + mp.size > u.iova) return neg(errc::invalid);
      }
      if (auto it = dom.maps.lower_bound(end); it != dom.maps.begin()) {
        const auto& [start, mp] = *std::prev(it);
        if (start >= u.iova && start < end && start + mp.size > end) return neg(errc::invalid);
      }
      if (u.flags & VFIO_DMA_UNMAP_FLAG_VADDR) return 0;  // CPR: mappings stay, vaddr invalidated
      std::uint64_t bytes = 0;
      tracked_kmem tm{mem_, dom.pages};
      for (auto it = dom.maps.lower_bound(u.iova); it != dom.maps.end() && it->first < end;) {
        auto r = hw::unmap(tm, dom.root, dom.levels, iova{it->first}, it->second.size);
        if (r) bytes += *r;
        it = dom.maps.erase(it);
      }
      u.size = bytes;
      return 0;
    }
    default: return neg(errc::not_tty);
  }
}

// ---------------------------------------------------------------- group

long kernel_core::group_ioctl(int pid, file& g, unsigned long cmd, void* arg) {
  switch (cmd) {
    case VFIO_GROUP_GET_STATUS: {
      auto& s = *static_cast<vfio_group_status*>(arg);
      if (!argsz_ok(s, sizeof s)) return neg(errc::invalid);
      s.flags = VFIO_GROUP_FLAGS_VIABLE | (g.container ? VFIO_GROUP_FLAGS_CONTAINER_SET : 0u);
      return 0;
    }
    case VFIO_GROUP_SET_CONTAINER: {
      const int cfd = *static_cast<const int*>(arg);
      auto& fds = processes_[pid];
      auto it = fds.find(cfd);
      if (it == fds.end() || it->second->kind != file_kind::container) return neg(errc::bad_fd);
      if (g.container) return neg(errc::busy);
      g.container = it->second;
      return 0;
    }
    case VFIO_GROUP_UNSET_CONTAINER:
      if (!g.container) return neg(errc::invalid);
      drop_container(g.container);
      return 0;
    case VFIO_GROUP_GET_DEVICE_FD: {
      const std::string_view name{static_cast<const char*>(arg)};
      if (!g.container || !g.container->type1) return neg(errc::invalid);
      const auto sp = name.find(' ');
      auto b = bdf::parse(name.substr(0, sp));
      vdev* d = b ? find_dev(*b) : nullptr;
      if (!d || d->address.source_id() != g.group) return neg(errc::not_found);
      std::optional<token> presented;
      if (sp != std::string_view::npos) {
        auto opt = name.substr(sp + 1);
        if (!opt.starts_with("vf_token=")) return neg(errc::invalid);
        presented = token::parse(opt.substr(9));
        if (!presented) return neg(errc::invalid);
      }
      auto& c = *g.container;
      using enum fsm::device_state;
      if (d->state == running) {
        if (presented && cfg_.mode == kernel_mode::keepalive) return neg(fsm::check(running, reclaimed));
        if (d->owner) return neg(errc::busy);
        if (!c.domain) {
          c.domain = new_domain();
          if (!c.domain) return neg(errc::no_memory);
        }
        // vfio_pci_core_enable(): reset on open, then memory decoding on.
        reset_function(*d);
        cfg_write(*d, hw::pci::command, 2, hw::pci::command_memory_space);
        d->domain = c.domain;
        attach(*d, *c.domain);
      } else {
        if (const errc e = fsm::check(d->state, reclaimed); e != errc::ok) return neg(e);
        if (!presented || *presented != d->owner_token) return neg(errc::access_denied);
        if (c.domain && c.domain != d->domain) {
          // The container's own (fresh) domain gives way to the preserved one.
          if (c.domain->attached != 0 || !c.domain->maps.empty()) return neg(errc::busy);
          free_domain(*c.domain);
        }
        c.domain = d->domain;
        d->domain->state = fsm::domain_state::adopted;
        d->state = reclaimed;
      }
      auto f = std::make_shared<file>(file_kind::device);
      f->id = next_file_id_++;
      f->dev = d;
      f->container = g.container;
      d->owner = f.get();
      auto& fds = processes_[pid];
      int fd = 3;
      while (fds.count(fd)) ++fd;
      fds[fd] = f;
      return fd;
    }
    default: return neg(errc::not_tty);
  }
}

// ---------------------------------------------------------------- device

void kernel_core::program_msix(vdev& d, unsigned index, std::optional<irte_index> irte, bool masked) {
  const std::uint64_t at = KA_NIC_MSIX_TABLE_OFF + std::uint64_t{index} * 16;
  hw::msix_table_entry e;
  if (irte) e.set_message(hw::encode_remappable(*irte));
  e.set_masked(true);
  // Mask, write the message, then unmask: the device never sends half an entry.
  d.fn->mmio_write(0, at + 12, 4, e.vector_control());
  d.fn->mmio_write(0, at + 0, 4, e.address_lo());
  d.fn->mmio_write(0, at + 4, 4, e.address_hi());
  d.fn->mmio_write(0, at + 8, 4, e.data());
  if (!masked) mask_msix(d, index, false);
}

void kernel_core::mask_msix(vdev& d, unsigned index, bool masked) {
  const std::uint64_t at = KA_NIC_MSIX_TABLE_OFF + std::uint64_t{index} * 16 + 12;
  d.fn->mmio_write(0, at, 4, masked ? hw::msix_table_entry::vector_control_masked : 0u);
}

void kernel_core::free_vector(vdev& d, unsigned index) {
  auto& s = d.vectors[index];
  if (s.state == fsm::vector_state::free) return;
  program_msix(d, index, std::nullopt, true);
  free_irte(s.irte);
  for (auto it = host_vectors_.begin(); it != host_vectors_.end();)
    it = (it->second.first == &d && it->second.second == index) ? host_vectors_.erase(it) : std::next(it);
  if (s.pid && s.irqfd) s.pid->irqfds.erase(s.pir_bit.value());
  s = vector_slot{};
}

void kernel_core::reset_function(vdev& d) {
  d.fn->function_level_reset();
  ++stats_.device_resets;
  // pci_restore_state(): the BAR the kernel assigned is written back.
  if (d.bar0) {
    const auto bar = hw::pci::encode_bar64(d.bar0, false);
    cfg_write(d, hw::pci::bar_offset(0), 4, bar[0]);
    cfg_write(d, hw::pci::bar_offset(1), 4, bar[1]);
  }
}

void kernel_core::release_device(vdev& d) {
  // vfio_pci_core_disable(): vectors freed, MSI-X off, decoding and bus
  // mastering off, function reset, DMA domain detached.
  for (unsigned i = 0; i < d.vectors.size(); ++i) free_vector(d, i);
  cfg_write(d, hw::pci::command, 2, 0);
  reset_function(d);
  detach(d);
  d.domain.reset();
}

long kernel_core::device_ioctl(file& f, unsigned long cmd, void* arg) {
  vdev& d = *f.dev;
  switch (cmd) {
    case VFIO_DEVICE_GET_INFO: {
      auto& i = *static_cast<vfio_device_info*>(arg);
      if (!argsz_ok(i, offsetof(vfio_device_info, num_irqs) + sizeof i.num_irqs)) return neg(errc::invalid);
      i.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
      i.num_regions = VFIO_PCI_NUM_REGIONS;
      i.num_irqs = VFIO_PCI_NUM_IRQS;
      return 0;
    }
    case VFIO_DEVICE_GET_REGION_INFO: {
      auto& r = *static_cast<vfio_region_info*>(arg);
      if (!argsz_ok(r, offsetof(vfio_region_info, offset) + sizeof r.offset)) return neg(errc::invalid);
      if (r.index >= VFIO_PCI_NUM_REGIONS) return neg(errc::invalid);
      r.offset = std::uint64_t{r.index} << region_shift;
      r.cap_offset = 0;
      r.flags = 0;
      r.size = 0;
      if (r.index == VFIO_PCI_CONFIG_REGION_INDEX) {
        r.size = hw::pci::extended_config_space_size;
        r.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
      } else if (r.index <= VFIO_PCI_BAR5_REGION_INDEX && d.fn->bar_size(r.index)) {
        r.size = d.fn->bar_size(r.index);
        r.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
      }
      return 0;
    }
    case VFIO_DEVICE_GET_IRQ_INFO: {
      auto& q = *static_cast<vfio_irq_info*>(arg);
      if (!argsz_ok(q, offsetof(vfio_irq_info, count) + sizeof q.count)) return neg(errc::invalid);
      if (q.index >= VFIO_PCI_NUM_IRQS) return neg(errc::invalid);
      q.flags = 0;
      q.count = 0;
      if (q.index == VFIO_PCI_MSIX_IRQ_INDEX) {
        q.flags = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE;
        q.count = static_cast<std::uint32_t>(d.vectors.size());
      }
      return 0;
    }
    case VFIO_DEVICE_SET_IRQS: {
      auto& h = *static_cast<vfio_irq_set*>(arg);
      if (!argsz_ok(h, sizeof(vfio_irq_set))) return neg(errc::invalid);
      if (h.index != VFIO_PCI_MSIX_IRQ_INDEX) return neg(errc::invalid);
      const std::uint32_t type = h.flags & VFIO_IRQ_SET_DATA_TYPE_MASK, action = h.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
      if (h.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK)) return neg(errc::invalid);
      if (action != VFIO_IRQ_SET_ACTION_TRIGGER) return neg(errc::invalid);
      if (type == VFIO_IRQ_SET_DATA_NONE && h.count == 0) {
        for (unsigned i = 0; i < d.vectors.size(); ++i)
          if (d.vectors[i].state != fsm::vector_state::preserved) free_vector(d, i);
        return 0;
      }
      if (type != VFIO_IRQ_SET_DATA_EVENTFD) return neg(errc::invalid);
      if (h.start >= d.vectors.size() || h.count > d.vectors.size() - h.start) return neg(errc::invalid);
      if (h.argsz < sizeof(vfio_irq_set) + h.count * sizeof(std::int32_t)) return neg(errc::invalid);
      const auto* fds = reinterpret_cast<const std::int32_t*>(static_cast<const std::byte*>(arg) + sizeof(vfio_irq_set));
      return set_irqs(d, h, std::span{fds, h.count});
    }
    case VFIO_DEVICE_RESET:
      if (d.state != fsm::device_state::running) return neg(errc::busy);
      reset_function(d);
      cfg_write(d, hw::pci::command, 2, hw::pci::command_memory_space);
      return 0;
    default: break;
  }
  if (cfg_.mode == kernel_mode::baseline) return neg(errc::not_tty);
  dev_ctx ctx{*this, d};
  static constexpr std::array<abi::ioctl_op<dev_ctx>, 4> ops{
      abi::make_op<dev_ctx, vfio_keepalive_enter, &kernel_core::op_enter>(VFIO_DEVICE_KEEPALIVE_ENTER, "ENTER"),
      abi::make_op<dev_ctx, vfio_keepalive_leave, &kernel_core::op_leave>(VFIO_DEVICE_KEEPALIVE_LEAVE, "LEAVE"),
      abi::make_op<dev_ctx, vfio_keepalive_status, &kernel_core::op_status>(VFIO_DEVICE_KEEPALIVE_GET_STATUS, "GET_STATUS"),
      abi::make_op<dev_ctx, vfio_keepalive_iommufd, &kernel_core::op_get_iommufd>(VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, "GET_IOMMUFD"),
  };
  return dispatch_user(std::span<const abi::ioctl_op<dev_ctx>>{ops}, ctx, cmd, arg);
}

}  // namespace keepalive::sim
