#include "keepalive/session.hpp"

#include <fcntl.h>
#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>

#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "keepalive/model/device.hpp"

namespace keepalive {
namespace {

using model::device_state;
using running_dev = model::device<device_state::running>;
using kept_dev = model::device<device_state::kept_alive>;
using reclaimed_dev = model::device<device_state::reclaimed>;
using clock = std::chrono::steady_clock;

errc errc_of(long rc) { return errc_from_errno(static_cast<int>(-rc)); }

// "devices 1-2", "device 1", "no device" (1-based, as an operator counts).
std::string first_n(std::size_t n) {
  if (n == 0) return "no device";
  if (n == 1) return "device 1";
  return fmt::format("devices 1-{}", n);
}

std::string fallback_advice(errc e) {
  switch (e) {
    case errc::access_denied:
      return "wrong token: reclaim with the token the devices entered with; if it is lost, fallback_reset then open";
    case errc::not_found: return "the device is not in keepalive (reset or never entered): open it cold";
    case errc::busy:
      return "the device is in ERROR (e.g. refused handover image) or owned elsewhere: fallback_reset then open";
    default: return "safe fallback: fallback_reset then open (the guest driver re-initialises the device)";
  }
}

}  // namespace

std::string_view name(session_phase p) noexcept {
  switch (p) {
    case session_phase::idle: return "idle";
    case session_phase::running: return "running";
    case session_phase::frozen: return "frozen";
    case session_phase::handed_over: return "handed_over";
    case session_phase::reclaimed: return "reclaimed";
    case session_phase::broken: return "broken";
  }
  return "invalid";
}

std::string_view name(mark_kind k) noexcept {
  switch (k) {
    case mark_kind::open_begin: return "open_begin";
    case mark_kind::open_end: return "open_end";
    case mark_kind::freeze_begin: return "freeze_begin";
    case mark_kind::enter: return "enter";
    case mark_kind::snapshot: return "snapshot";
    case mark_kind::freeze_end: return "freeze_end";
    case mark_kind::thaw: return "thaw";
    case mark_kind::hand_over: return "hand_over";
    case mark_kind::reclaim_begin: return "reclaim_begin";
    case mark_kind::reclaim_open: return "reclaim_open";
    case mark_kind::map: return "map";
    case mark_kind::set_irqs: return "set_irqs";
    case mark_kind::connect: return "connect";
    case mark_kind::leave: return "leave";
    case mark_kind::reclaim_end: return "reclaim_end";
    case mark_kind::rollback: return "rollback";
  }
  return "invalid";
}

struct session::impl {
  struct slot {
    device_spec spec;
    int fd = -1;
    abi::irq_mode mode = abi::irq_mode::none;
    std::variant<std::monostate, running_dev, kept_dev, reclaimed_dev> handle;
  };

  explicit impl(abi::syscalls& s) : sys{s} {}

  abi::syscalls& sys;
  session_phase phase = session_phase::idle;
  std::vector<device_spec> specs;
  std::vector<ram_region> ram;
  std::vector<slot> slots;
  int container = -1;
  std::map<std::uint32_t, int> groups;
  token owner;
  std::vector<abi::irq_mode> frozen_modes;  // per device, as entered at freeze
  std::vector<timing_mark> marks;

  result<snapshot> enter_all(const token& t, snapshot snap, freeze_options opt);
  status reclaim_all(const snapshot& snap, interrupt_wiring& w);

  void mark(mark_kind k, std::size_t device = timing_mark::no_device) { marks.push_back({k, device, clock::now()}); }

  // The request is the arc named `what` out of the current phase.
  result<session_phase> allow(std::string_view what) const {
    for (const auto& a : session_table.arcs())
      if (a.from == phase && a.name == what && a.kind != fsm::arc_kind::failure) return a.to;
    return {errc::busy, fmt::format("session is {}: {} not allowed", name(phase), what)};
  }
  status only_in(session_phase p, std::string_view what) const {
    if (phase == p) return {};
    return {errc::busy, fmt::format("session is {}: {} only when {}", name(phase), what, name(p))};
  }

  std::string who(std::size_t i) const {
    return fmt::format("{} (device {} of {})", specs[i].address.to_string(), i + 1, specs.size());
  }

  template <typename Handle>
  Handle take(slot& s) {
    Handle h = std::get<Handle>(std::move(s.handle));
    s.handle = std::monostate{};
    return h;
  }

  // Closes device fds (in order), then groups, then the container. A device
  // in keepalive whose fd closes becomes OWNERLESS; a running one is released.
  errc close_all() noexcept {
    errc first = errc::ok;
    auto note = [&](errc e) {
      if (first == errc::ok) first = e;
    };
    for (auto& s : slots) {
      if (s.fd >= 0) note(sys.close(s.fd));
      s.fd = -1;
      s.handle = std::monostate{};
      s.mode = abi::irq_mode::none;
    }
    for (auto& [g, fd] : groups) note(sys.close(fd));
    groups.clear();
    if (container >= 0) note(sys.close(container));
    container = -1;
    return first;
  }

  status ioctl_ok(int fd, unsigned long cmd, void* arg, std::string_view what) {
    const long rc = sys.ioctl(fd, cmd, arg);
    if (rc < 0) return {errc_of(rc), std::string{what}};
    return {};
  }

  // Container, groups, device fds; `reclaim` presents the token. On error the
  // caller closes what is open. `opened` counts device fds obtained.
  status open_devices(const std::optional<token>& reclaim, std::size_t& opened) {
    opened = 0;
    auto c = sys.open("/dev/vfio/vfio", O_RDWR);
    if (!c) return c.err();
    container = *c;
    if (const long v = sys.ioctl(container, VFIO_GET_API_VERSION, nullptr); v != VFIO_API_VERSION)
      return {errc::not_supported, fmt::format("VFIO API version {} (want {})", v, VFIO_API_VERSION)};
    if (sys.ioctl(container, VFIO_CHECK_EXTENSION, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU})) != 1)
      return {errc::not_supported, "VFIO type1v2 IOMMU not available"};
    const char* verb = reclaim ? "reclaim" : "open";
    bool iommu_set = false;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const auto& d = specs[i];
      if (!groups.count(d.group)) {
        const std::string path = fmt::format("/dev/vfio/{}", d.group);
        auto g = sys.open(path, O_RDWR);
        if (!g) return {g.err().code(), fmt::format("{} {}: open {}", verb, who(i), path)};
        groups[d.group] = *g;
        vfio_group_status gs{};
        gs.argsz = sizeof gs;
        if (auto st = ioctl_ok(*g, VFIO_GROUP_GET_STATUS, &gs, "VFIO_GROUP_GET_STATUS"); !st)
          return {st.code(), fmt::format("{} {}: {}", verb, who(i), st.err().context())};
        if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE))
          return {errc::busy, fmt::format("{} {}: group {} not viable (bind all its devices to vfio-pci)", verb, who(i),
                                          d.group)};
        int cfd = container;
        if (auto st = ioctl_ok(*g, VFIO_GROUP_SET_CONTAINER, &cfd, "VFIO_GROUP_SET_CONTAINER"); !st)
          return {st.code(), fmt::format("{} {}: {}", verb, who(i), st.err().context())};
        if (!iommu_set) {
          if (auto st = ioctl_ok(container, VFIO_SET_IOMMU, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU}),
                                 "VFIO_SET_IOMMU");
              !st)
            return {st.code(), fmt::format("{} {}: {}", verb, who(i), st.err().context())};
          iommu_set = true;
        }
      }
      std::string devname = reclaim ? abi::reclaim_name(d.address, *reclaim) : d.address.to_string();
      const long fd = sys.ioctl(groups[d.group], VFIO_GROUP_GET_DEVICE_FD, devname.data());
      if (fd < 0) return {errc_of(fd), fmt::format("{} {}: VFIO_GROUP_GET_DEVICE_FD", verb, who(i))};
      slots[i].fd = static_cast<int>(fd);
      ++opened;
      if (reclaim) {
        // The kernel accepted the token: the device was OWNERLESS (or RESTORED,
        // the same arc) with it.
        auto seen = model::observed<device_state::ownerless>({d.address, *reclaim});
        if (!seen) return seen.err();
        auto r = model::reclaim(std::move(*seen), *reclaim);
        if (!r) return r.err();
        slots[i].handle = std::move(r).value();
        mark(mark_kind::reclaim_open, i);
      } else {
        slots[i].handle = running_dev{d.address};
      }
    }
    return {};
  }

  status map_ram() {
    for (std::size_t i = 0; i < ram.size(); ++i) {
      const auto& r = ram[i];
      vfio_iommu_type1_dma_map m{};
      m.argsz = sizeof m;
      m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
      m.vaddr = r.vaddr;
      m.iova = r.io.value();
      m.size = r.bytes;
      if (auto st = ioctl_ok(container, VFIO_IOMMU_MAP_DMA, &m, "VFIO_IOMMU_MAP_DMA"); !st)
        return {st.code(), fmt::format("map RAM region {} (gpa {:#x} iova {:#x} size {:#x}): VFIO_IOMMU_MAP_DMA", i,
                                       r.guest.value(), r.io.value(), r.bytes)};
    }
    mark(mark_kind::map);
    return {};
  }

  // Per device: eventfds from the wiring, one SET_IRQS for MSI-X 0..max
  // (-1 for indices not in use), then connect every vector.
  status wire(interrupt_wiring& w, std::vector<vector_binding>& connected) {
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const auto& d = specs[i];
      if (d.vectors.empty()) continue;
      std::vector<vector_binding> bindings;
      std::vector<int> efds;
      std::uint32_t count = 0;
      for (const auto& v : d.vectors) {
        vector_binding b{i, d.address, slots[i].fd, v};
        auto efd = w.eventfd(b);
        if (!efd)
          return {efd.code(), fmt::format("eventfd for {} MSI-X {}: {}", who(i), v.msix.value(), efd.err().context())};
        bindings.push_back(b);
        efds.push_back(*efd);
        count = std::max<std::uint32_t>(count, v.msix.value() + 1u);
      }
      std::vector<std::byte> buf(sizeof(vfio_irq_set) + count * sizeof(std::int32_t));
      vfio_irq_set head{};
      head.argsz = static_cast<std::uint32_t>(buf.size());
      head.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
      head.index = VFIO_PCI_MSIX_IRQ_INDEX;
      head.start = 0;
      head.count = count;
      std::memcpy(buf.data(), &head, sizeof head);
      std::vector<std::int32_t> fds(count, -1);
      for (std::size_t k = 0; k < bindings.size(); ++k) fds[bindings[k].route.msix.value()] = efds[k];
      std::memcpy(buf.data() + sizeof head, fds.data(), fds.size() * sizeof(std::int32_t));
      if (auto st = ioctl_ok(slots[i].fd, VFIO_DEVICE_SET_IRQS, buf.data(), "VFIO_DEVICE_SET_IRQS"); !st)
        return {st.code(), fmt::format("set up vectors of {}: VFIO_DEVICE_SET_IRQS", who(i))};
      mark(mark_kind::set_irqs, i);
      for (std::size_t k = 0; k < bindings.size(); ++k) {
        connected.push_back(bindings[k]);
        if (auto st = w.connect(bindings[k], efds[k]); !st)
          return {st.code(), fmt::format("connect {} MSI-X {} to vCPU {} as vector {:#x}: {}", who(i),
                                         bindings[k].route.msix.value(), bindings[k].route.vcpu,
                                         bindings[k].route.guest_vector.value(), st.err().context())};
      }
      mark(mark_kind::connect, i);
    }
    return {};
  }

  void reset_slots() {
    slots.clear();
    slots.resize(specs.size());
    for (std::size_t i = 0; i < specs.size(); ++i) slots[i].spec = specs[i];
  }
};

session::session(abi::syscalls& sys) : m_{std::make_unique<impl>(sys)} {}

session::~session() { (void)m_->close_all(); }

session_phase session::phase() const noexcept { return m_->phase; }
const std::vector<device_spec>& session::devices() const noexcept { return m_->specs; }
const std::vector<ram_region>& session::ram() const noexcept { return m_->ram; }
abi::syscalls& session::syscalls() noexcept { return m_->sys; }
const std::vector<timing_mark>& session::timeline() const noexcept { return m_->marks; }
void session::clear_timeline() noexcept { m_->marks.clear(); }

int session::device_fd(std::size_t index) const noexcept {
  return index < m_->slots.size() ? m_->slots[index].fd : -1;
}
int session::container_fd() const noexcept { return m_->container; }

std::optional<token> session::owner_token() const {
  if (m_->phase == session_phase::frozen || m_->phase == session_phase::handed_over) return m_->owner;
  return std::nullopt;
}

result<std::size_t> session::add_device(device_spec d) {
  if (auto st = m_->only_in(session_phase::idle, "add_device"); !st) return st.err();
  for (const auto& o : m_->specs)
    if (o.address == d.address) return {errc::invalid, fmt::format("device {} added twice", d.address.to_string())};
  // The snapshot's rules, checked now rather than at freeze.
  snapshot probe;
  probe.owner = token{token::bytes{1}};
  probe.nr_vcpus = snapshot_max_vcpus;
  probe.devices.push_back({d.address, d.group, abi::irq_mode::none, d.vectors});
  if (auto why = validate(probe)) return {errc::invalid, *why};
  m_->specs.push_back(std::move(d));
  return m_->specs.size() - 1;
}

status session::add_vector(std::size_t device_index, vector_route v) {
  if (auto st = m_->only_in(session_phase::idle, "add_vector"); !st) return st;
  if (device_index >= m_->specs.size()) return {errc::invalid, fmt::format("add_vector: no device {}", device_index)};
  auto d = m_->specs[device_index];
  d.vectors.push_back(v);
  snapshot probe;
  probe.owner = token{token::bytes{1}};
  probe.nr_vcpus = snapshot_max_vcpus;
  probe.devices.push_back({d.address, d.group, abi::irq_mode::none, d.vectors});
  if (auto why = validate(probe)) return {errc::invalid, *why};
  m_->specs[device_index] = std::move(d);
  return {};
}

status session::add_ram(ram_region r) {
  if (auto st = m_->only_in(session_phase::idle, "add_ram"); !st) return st;
  snapshot probe;
  probe.owner = token{token::bytes{1}};
  probe.nr_vcpus = 1;
  probe.ram = m_->ram;
  probe.ram.push_back(r);
  if (auto why = validate(probe)) return {errc::invalid, *why};
  m_->ram.push_back(std::move(r));
  return {};
}

status session::open(interrupt_wiring& w) {
  auto& m = *m_;
  if (auto st = m.allow("open"); !st) return st.err();
  if (m.specs.empty()) return {errc::invalid, "open: no devices"};
  m.mark(mark_kind::open_begin);
  m.reset_slots();
  std::size_t opened = 0;
  std::vector<vector_binding> connected;
  status st = m.open_devices(std::nullopt, opened);
  if (st) st = m.map_ram();
  if (st) st = m.wire(w, connected);
  if (!st) {
    (void)m.close_all();
    if (!connected.empty()) w.rolled_back(connected);
    m.mark(mark_kind::rollback);
    return st;
  }
  m.phase = session_phase::running;
  m.mark(mark_kind::open_end);
  return {};
}

status add_vmm_state(snapshot& snap, vmm_state state) {
  // Swapped in, validated, swapped back out if refused: no copy in the pause.
  std::swap(snap.nr_vcpus, state.nr_vcpus);
  std::swap(snap.vcpu_state, state.vcpu_state);
  std::swap(snap.extra, state.extra);
  if (auto why = validate(snap)) {
    std::swap(snap.nr_vcpus, state.nr_vcpus);
    std::swap(snap.vcpu_state, state.vcpu_state);
    std::swap(snap.extra, state.extra);
    return {errc::invalid, "add_vmm_state: " + *why};
  }
  return {};
}

result<snapshot> session::freeze(const token& t, const vmm_state& state, freeze_options opt) {
  auto& m = *m_;
  if (auto st = m.allow("freeze"); !st) return st.err();
  if (t.is_nil()) return {errc::invalid, "freeze: all-zero token"};
  snapshot snap;
  snap.owner = t;
  snap.nr_vcpus = state.nr_vcpus;
  for (const auto& d : m.specs) snap.devices.push_back({d.address, d.group, abi::irq_mode::none, d.vectors});
  snap.ram = m.ram;
  snap.vcpu_state = state.vcpu_state;
  snap.extra = state.extra;
  if (auto why = validate(snap)) return {errc::invalid, "freeze: " + *why};
  return m.enter_all(t, std::move(snap), opt);
}

result<snapshot> session::freeze(const token& t) { return freeze(t, freeze_options{}); }

result<snapshot> session::freeze(const token& t, freeze_options opt) {
  auto& m = *m_;
  if (auto st = m.allow("freeze"); !st) return st.err();
  if (t.is_nil()) return {errc::invalid, "freeze: all-zero token"};
  // Devices and RAM were checked when added (or came from a validated
  // snapshot); vCPU numbers are checked by add_vmm_state. Nothing to validate
  // in the pause.
  snapshot snap;
  snap.owner = t;
  snap.nr_vcpus = 0;  // incomplete until add_vmm_state
  snap.devices.reserve(m.specs.size());
  for (const auto& d : m.specs) snap.devices.push_back({d.address, d.group, abi::irq_mode::none, d.vectors});
  snap.ram = m.ram;
  return m.enter_all(t, std::move(snap), opt);
}

result<snapshot> session::impl::enter_all(const token& t, snapshot snap, freeze_options opt) {
  auto& m = *this;
  m.mark(mark_kind::freeze_begin);
  const std::size_t n = m.slots.size();
  for (std::size_t i = 0; i < n; ++i) {
    auto& s = m.slots[i];
    auto r = abi::keepalive_enter(m.sys, s.fd, t, {.allow_masking = opt.allow_masking});
    std::optional<error> failed;
    std::size_t undo = i;  // devices [0, undo) to leave again
    if (!r) {
      failed = error{r.code(), fmt::format("enter {}: {}", m.who(i), r.err().context())};
    } else if (r->nr_vectors != s.spec.vectors.size()) {
      failed = error{errc::invalid, fmt::format("enter {}: the kernel preserved {} vectors, the session set up {}",
                                                m.who(i), r->nr_vectors, s.spec.vectors.size())};
      s.handle = model::enter(m.take<running_dev>(s), t).value();
      undo = i + 1;
    } else {
      s.mode = r->mode;
      s.handle = model::enter(m.take<running_dev>(s), t).value();
      m.mark(mark_kind::enter, i);
      continue;
    }
    // Roll back: devices [0, undo) leave keepalive again.
    for (std::size_t k = 0; k < undo; ++k) {
      auto& u = m.slots[k];
      if (auto st = abi::keepalive_leave(m.sys, u.fd, t); !st) {
        m.phase = session_phase::broken;
        return {failed->code(), fmt::format("{}; rollback failed: leave {}: {}; session broken, close it",
                                            failed->context(), m.who(k), st.err().message())};
      }
      u.handle = model::leave(m.take<kept_dev>(u));
      u.mode = abi::irq_mode::none;
    }
    m.mark(mark_kind::rollback);
    if (undo == 0) return {failed->code(), failed->context() + "; nothing to undo, the VM keeps running"};
    return {failed->code(),
            fmt::format("{}; {} left keepalive again, the VM keeps running", failed->context(), first_n(undo))};
  }
  for (std::size_t i = 0; i < n; ++i) snap.devices[i].mode = m.slots[i].mode;
  m.frozen_modes.clear();
  for (const auto& d : snap.devices) m.frozen_modes.push_back(d.mode);
  m.mark(mark_kind::snapshot);
  m.owner = t;
  m.phase = session_phase::frozen;
  m.mark(mark_kind::freeze_end);
  return snap;
}

status session::thaw() {
  auto& m = *m_;
  if (auto st = m.allow("thaw"); !st) return st.err();
  for (std::size_t i = 0; i < m.slots.size(); ++i) {
    auto& s = m.slots[i];
    if (auto st = abi::keepalive_leave(m.sys, s.fd, m.owner); !st) {
      // All or nothing: the ones that left enter again.
      for (std::size_t k = 0; k < i; ++k) {
        auto& u = m.slots[k];
        auto r = abi::keepalive_enter(m.sys, u.fd, m.owner, {.allow_masking = u.mode == abi::irq_mode::masked});
        if (!r) {
          m.phase = session_phase::broken;
          return {st.code(), fmt::format("leave {}: {}; rollback failed: enter {}: {}; session broken, close it",
                                         m.who(i), st.err().context(), m.who(k), r.err().message())};
        }
        u.handle = model::enter(m.take<running_dev>(u), m.owner).value();
      }
      m.mark(mark_kind::rollback);
      return {st.code(), fmt::format("leave {}: {}; {}, the session stays frozen", m.who(i), st.err().context(),
                                     i == 0 ? std::string{"nothing to undo"} : first_n(i) + " entered again")};
    }
    s.handle = model::leave(m.take<kept_dev>(s));
  }
  for (auto& s : m.slots) s.mode = abi::irq_mode::none;
  m.owner = token{};
  m.phase = session_phase::running;
  m.mark(mark_kind::thaw);
  return {};
}

status session::hand_over() {
  auto& m = *m_;
  if (auto st = m.allow("hand_over"); !st) return st.err();
  for (auto& s : m.slots) (void)model::close(m.take<kept_dev>(s));
  const errc e = m.close_all();
  m.phase = session_phase::handed_over;
  m.mark(mark_kind::hand_over);
  if (e != errc::ok) return {e, "hand_over: close"};
  return {};
}

status session::reclaim(const snapshot& snap, interrupt_wiring& w) {
  auto& m = *m_;
  if (auto st = m.allow("reclaim"); !st) return st.err();
  if (auto why = validate(snap)) return {errc::invalid, "reclaim: snapshot: " + *why};
  if (snap.devices.empty()) return {errc::invalid, "reclaim: the snapshot has no devices"};
  return m.reclaim_all(snap, w);
}

status session::call_off(interrupt_wiring& w) {
  auto& m = *m_;
  if (auto st = m.allow("call_off"); !st) return st.err();
  // The kernel took every vector at the close: the wiring drops what it
  // connected for them before they are connected again.
  std::vector<vector_binding> taken;
  for (std::size_t i = 0; i < m.specs.size(); ++i)
    for (const auto& v : m.specs[i].vectors) taken.push_back({i, m.specs[i].address, -1, v});
  if (!taken.empty()) w.rolled_back(taken);
  snapshot own;
  own.owner = m.owner;
  own.nr_vcpus = snapshot_max_vcpus;
  for (std::size_t i = 0; i < m.specs.size(); ++i)
    own.devices.push_back({m.specs[i].address, m.specs[i].group,
                           i < m.frozen_modes.size() ? m.frozen_modes[i] : abi::irq_mode::none, m.specs[i].vectors});
  own.ram = m.ram;
  m.phase = session_phase::idle;  // reclaim_all starts from nothing open, as reclaim does
  auto st = m.reclaim_all(own, w);
  if (st) m.owner = token{};
  return st;
}

status session::impl::reclaim_all(const snapshot& snap, interrupt_wiring& w) {
  auto& m = *this;
  m.specs.clear();
  for (const auto& d : snap.devices) m.specs.push_back({d.address, d.group, d.vectors});
  m.ram = snap.ram;
  m.reset_slots();
  m.mark(mark_kind::reclaim_begin);

  const std::size_t n = m.specs.size();
  std::size_t opened = 0;
  std::vector<vector_binding> connected;
  // Every device already reclaimed goes back to OWNERLESS: its fd closes
  // without LEAVE (vectors and domain preserved again, token kept).
  // The wiring hears of it after the kernel preserved the vectors again.
  auto put_back = [&](const error& why) -> status {
    for (auto& s : m.slots)
      if (std::holds_alternative<reclaimed_dev>(s.handle)) (void)model::close(m.take<reclaimed_dev>(s));
    (void)m.close_all();
    if (!connected.empty()) w.rolled_back(connected);
    m.phase = session_phase::idle;
    m.mark(mark_kind::rollback);
    const std::string back = opened == 0 ? std::string{"nothing was reclaimed"}
                                         : fmt::format("{} put back (OWNERLESS, still reclaimable)", first_n(opened));
    return {why.code(), fmt::format("{}; {}; {}", why.context(), back, fallback_advice(why.code()))};
  };

  if (auto st = m.open_devices(snap.owner, opened); !st) return put_back(st.err());
  m.phase = session_phase::reclaimed;
  if (auto st = m.map_ram(); !st) return put_back(st.err());
  if (auto st = m.wire(w, connected); !st) return put_back(st.err());
  for (std::size_t i = 0; i < n; ++i) {
    auto& s = m.slots[i];
    if (auto st = abi::keepalive_leave(m.sys, s.fd, snap.owner); !st) {
      // Devices [0, i) are RUNNING already: they enter again, then all go back.
      for (std::size_t k = 0; k < i; ++k) {
        auto& u = m.slots[k];
        auto r = abi::keepalive_enter(m.sys, u.fd, snap.owner,
                                      {.allow_masking = snap.devices[k].mode == abi::irq_mode::masked});
        if (!r) {
          m.phase = session_phase::broken;
          return {st.code(), fmt::format("leave {}: {}; rollback failed: enter {}: {}; session broken, close it "
                                         "(devices still in keepalive become OWNERLESS)",
                                         m.who(i), st.err().context(), m.who(k), r.err().message())};
        }
        u.handle = model::enter(m.take<running_dev>(u), snap.owner).value();
        (void)model::close(m.take<kept_dev>(u));
      }
      return put_back(error{st.code(), fmt::format("leave {}: {}", m.who(i), st.err().context())});
    }
    s.handle = model::leave(m.take<reclaimed_dev>(s));
    s.mode = abi::irq_mode::none;
    m.mark(mark_kind::leave, i);
  }
  m.phase = session_phase::running;
  m.mark(mark_kind::reclaim_end);
  return {};
}

status session::close() {
  auto& m = *m_;
  if (auto st = m.allow("close"); !st) return st.err();
  const errc e = m.close_all();
  m.phase = session_phase::idle;
  if (e != errc::ok) return {e, "close"};
  return {};
}

status session::fallback_reset(bdf device) {
  auto& m = *m_;
  if (auto st = m.only_in(session_phase::idle, "fallback_reset"); !st) return st;
  auto ctl = m.sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return {ctl.code(), "fallback reset " + device.to_string() + ": open " VFIO_KEEPALIVE_CTL_PATH};
  auto st = abi::reset_device(m.sys, *ctl, device);
  (void)m.sys.close(*ctl);
  if (!st) return {st.code(), "fallback " + st.err().context()};
  return {};
}

status session::fallback_reset(const snapshot& snap) {
  auto& m = *m_;
  if (auto st = m.only_in(session_phase::idle, "fallback_reset"); !st) return st;
  auto ctl = m.sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return {ctl.code(), "fallback reset: open " VFIO_KEEPALIVE_CTL_PATH};
  status result_st;
  auto rows = abi::list_devices(m.sys, *ctl);
  if (!rows) {
    result_st = status{rows.code(), "fallback reset: " + rows.err().context()};
  } else {
    for (const auto& d : snap.devices) {
      bool listed = false;
      for (const auto& r : *rows) listed = listed || r.device == d.address;
      if (!listed) continue;  // RUNNING: nothing to reset
      if (auto st = abi::reset_device(m.sys, *ctl, d.address); !st && result_st)
        result_st = status{st.code(), "fallback " + st.err().context()};
    }
  }
  (void)m.sys.close(*ctl);
  return result_st;
}

}  // namespace keepalive
