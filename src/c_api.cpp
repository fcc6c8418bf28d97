// The C API (include/keepalive/keepalive.h) over keepalive::session and
// keepalive::snapshot. No exception crosses it: allocation failure is -ENOMEM.
#include "keepalive/keepalive.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include <fmt/format.h>

#include "keepalive/abi/syscalls.hpp"
#include "keepalive/session.hpp"
#include "keepalive/sim_transport.hpp"
#include "keepalive/snapshot.hpp"

using namespace keepalive;

struct ka_session {
  std::unique_ptr<abi::syscalls> owned;
  abi::syscalls* sys = nullptr;
  sim_transport* sim = nullptr;  // set when `owned` is a sim transport
  std::unique_ptr<session> s;
  std::string last_error;
};

struct ka_snapshot {
  snapshot snap;
  std::string text;
};

namespace {

thread_local std::string thread_error;

int fail(std::string& where, const error& e) {
  where = e.message();
  return -e.errno_value();
}
int fail(ka_session* s, const error& e) { return fail(s ? s->last_error : thread_error, e); }
int fail(ka_session* s, errc c, std::string ctx) { return fail(s, error{c, std::move(ctx)}); }

// Runs f; no exception escapes to C.
template <typename F>
auto guarded(ka_session* s, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return static_cast<decltype(f())>(fail(s, errc::no_memory, "out of memory"));
  } catch (...) {
    return static_cast<decltype(f())>(fail(s, errc::io, "internal error"));
  }
}

class c_syscalls final : public abi::syscalls {
 public:
  explicit c_syscalls(const ka_syscalls& ops) : ops_{ops} {}
  long ioctl(int fd, unsigned long cmd, void* arg) override { return ops_.ioctl(ops_.user, fd, cmd, arg); }
  result<int> open(std::string_view path, int flags) override {
    const std::string p{path};
    const int fd = ops_.open(ops_.user, p.c_str(), flags);
    if (fd < 0) return {errc_from_errno(-fd), "open " + p};
    return fd;
  }
  errc close(int fd) override {
    const int r = ops_.close(ops_.user, fd);
    return r < 0 ? errc_from_errno(-r) : errc::ok;
  }
  result<std::size_t> pread(int fd, std::span<std::byte> out, std::uint64_t offset) override {
    const std::int64_t n = ops_.pread(ops_.user, fd, out.data(), out.size(), offset);
    if (n < 0) return {errc_from_errno(static_cast<int>(-n)), "pread"};
    return static_cast<std::size_t>(n);
  }
  result<std::size_t> pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) override {
    const std::int64_t n = ops_.pwrite(ops_.user, fd, in.data(), in.size(), offset);
    if (n < 0) return {errc_from_errno(static_cast<int>(-n)), "pwrite"};
    return static_cast<std::size_t>(n);
  }

 private:
  ka_syscalls ops_;
};

ka_vector_binding to_c(const vector_binding& b) {
  ka_vector_binding c{};
  c.device_index = static_cast<std::uint32_t>(b.device_index);
  c.bdf = b.device.packed();
  c.device_fd = b.device_fd;
  c.msix_index = b.route.msix.value();
  c.guest_vector = b.route.guest_vector.value();
  c.vcpu = b.route.vcpu;
  return c;
}

class c_wiring final : public interrupt_wiring {
 public:
  explicit c_wiring(const ka_wiring& w) : w_{w} {}
  result<int> eventfd(const vector_binding& b) override {
    const auto c = to_c(b);
    const int r = w_.eventfd(w_.user, &c);
    if (r < 0) return {errc_from_errno(-r), "wiring eventfd callback"};
    return r;
  }
  status connect(const vector_binding& b, int efd) override {
    const auto c = to_c(b);
    const int r = w_.connect(w_.user, &c, efd);
    if (r < 0) return {errc_from_errno(-r), "wiring connect callback"};
    return {};
  }
  void rolled_back(std::span<const vector_binding> connected) noexcept override {
    if (!w_.rolled_back) return;
    try {
      std::vector<ka_vector_binding> v;
      v.reserve(connected.size());
      for (const auto& b : connected) v.push_back(to_c(b));
      w_.rolled_back(w_.user, v.data(), v.size());
    } catch (...) {
      w_.rolled_back(w_.user, nullptr, 0);  // out of memory: "everything"
    }
  }

 private:
  ka_wiring w_;
};

bool wiring_ok(const ka_wiring* w) { return w && w->eventfd && w->connect; }

std::optional<token> parse_token(const char* t) {
  if (!t) return std::nullopt;
  return token::parse(t);
}

void copy_token(const token& t, char out[KA_TOKEN_STRLEN]) {
  const auto s = t.to_string();
  std::memcpy(out, s.c_str(), std::min<std::size_t>(s.size() + 1, KA_TOKEN_STRLEN));
  out[KA_TOKEN_STRLEN - 1] = '\0';
}

int status_to_int(ka_session* s, const status& st) { return st ? 0 : fail(s, st.err()); }

}  // namespace

extern "C" {

int ka_open_linux(ka_session** out) {
  if (!out) return -EINVAL;
  return guarded(nullptr, [&]() -> int {
    auto h = std::make_unique<ka_session>();
    h->sys = &abi::linux_syscalls();
    h->s = std::make_unique<session>(*h->sys);
    *out = h.release();
    return 0;
  });
}

int ka_connect_sim(const char* socket_path, ka_session** out) {
  if (!out) return -EINVAL;
  return guarded(nullptr, [&]() -> int {
    auto t = sim_transport::connect(socket_path ? socket_path : "");
    if (!t) return fail(nullptr, t.err());
    auto h = std::make_unique<ka_session>();
    h->sim = t->get();
    h->owned = std::move(*t);
    h->sys = h->owned.get();
    h->s = std::make_unique<session>(*h->sys);
    *out = h.release();
    return 0;
  });
}

int ka_sim_guest_area(const ka_session* s, std::uint64_t* start, std::uint64_t* bytes) {
  if (!s || !start || !bytes || !s->sim) return -EINVAL;
  *start = s->sim->guest_start();
  *bytes = s->sim->phys_size() - s->sim->guest_start();
  return 0;
}

int ka_sim_map_phys(ka_session* s, std::uint64_t offset, std::uint64_t len, void** addr) {
  if (!s || !addr) return -EINVAL;
  if (!s->sim) return fail(s, errc::invalid, "ka_sim_map_phys: not a sim session");
  return guarded(s, [&]() -> int {
    void* p = s->sim->map_phys(offset, len);
    if (!p) return fail(s, errc_from_errno(errno), "map physical memory");
    *addr = p;
    return 0;
  });
}

int ka_session_new(const ka_syscalls* sys, ka_session** out) {
  if (!out || !sys || !sys->ioctl || !sys->open || !sys->close || !sys->pread || !sys->pwrite)
    return fail(nullptr, errc::invalid, "ka_session_new: every syscall must be given");
  return guarded(nullptr, [&]() -> int {
    auto h = std::make_unique<ka_session>();
    h->owned = std::make_unique<c_syscalls>(*sys);
    h->sys = h->owned.get();
    h->s = std::make_unique<session>(*h->sys);
    *out = h.release();
    return 0;
  });
}

void ka_session_free(ka_session* s) { delete s; }

const char* ka_last_error(const ka_session* s) { return s ? s->last_error.c_str() : thread_error.c_str(); }

const char* ka_errno_name(int err) {
  const int e = err < 0 ? -err : err;
  return errc_name(static_cast<errc>(e)).data();
}

int ka_session_phase(const ka_session* s) {
  if (!s) return -EINVAL;
  return static_cast<int>(s->s->phase());
}

int ka_session_add_device(ka_session* s, const char* bdf_text, std::uint32_t iommu_group) {
  if (!s) return -EINVAL;
  return guarded(s, [&]() -> int {
    auto b = bdf_text ? bdf::parse(bdf_text) : std::nullopt;
    if (!b) return fail(s, errc::invalid, std::string{"not a PCI address: "} + (bdf_text ? bdf_text : "(null)"));
    auto r = s->s->add_device({*b, iommu_group, {}});
    if (!r) return fail(s, r.err());
    return static_cast<int>(*r);
  });
}

int ka_session_add_vector(ka_session* s, std::uint32_t device_index, std::uint16_t msix, std::uint8_t guest_vector,
                          std::uint32_t vcpu) {
  if (!s) return -EINVAL;
  return guarded(s, [&]() -> int {
    return status_to_int(s, s->s->add_vector(device_index, {msix_index{msix}, vector{guest_vector}, vcpu}));
  });
}

int ka_session_add_ram(ka_session* s, const ka_ram_region* r) {
  if (!s || !r) return -EINVAL;
  return guarded(s, [&]() -> int {
    ram_region m{gpa{r->gpa}, iova{r->iova}, r->size, r->vaddr, r->backing ? r->backing : "", r->backing_offset};
    return status_to_int(s, s->s->add_ram(std::move(m)));
  });
}

int ka_session_open(ka_session* s, const ka_wiring* w) {
  if (!s) return -EINVAL;
  if (!wiring_ok(w)) return fail(s, errc::invalid, "open: wiring needs eventfd and connect");
  return guarded(s, [&]() -> int {
    c_wiring cw{*w};
    return status_to_int(s, s->s->open(cw));
  });
}

namespace {
// The C state as the session's; errc::fault names the NULL pointer.
result<vmm_state> vmm_state_of(const ka_vmm_state& st, std::string_view what) {
  vmm_state vs;
  vs.nr_vcpus = st.nr_vcpus;
  if (st.nr_blobs && !st.blobs) return error{errc::fault, fmt::format("{}: blobs is NULL", what)};
  for (std::size_t i = 0; i < st.nr_blobs; ++i) {
    const auto& b = st.blobs[i];
    if (b.len && !b.data) return error{errc::fault, fmt::format("{}: blob data is NULL", what)};
    const auto* p = static_cast<const std::byte*>(b.data);
    vs.vcpu_state.push_back({b.vcpu, static_cast<vcpu_state_tag>(b.tag), std::vector<std::byte>(p, p + b.len)});
  }
  if (st.extra_len && !st.extra) return error{errc::fault, fmt::format("{}: extra is NULL", what)};
  const auto* e = static_cast<const std::byte*>(st.extra);
  vs.extra.assign(e, e + st.extra_len);
  return vs;
}
}  // namespace

int ka_session_freeze(ka_session* s, const char* tok, const ka_vmm_state* st, std::uint32_t flags, ka_snapshot** out) {
  if (!s) return -EINVAL;
  if (!out) return fail(s, errc::invalid, "freeze: out is required");
  if (flags & ~KA_FREEZE_ALLOW_MASKING) return fail(s, errc::invalid, "freeze: unknown flag");
  const auto t = parse_token(tok);
  if (!t) return fail(s, errc::invalid, std::string{"freeze: not a UUID: "} + (tok ? tok : "(null)"));
  return guarded(s, [&]() -> int {
    const freeze_options opt{.allow_masking = (flags & KA_FREEZE_ALLOW_MASKING) != 0};
    auto snap = std::make_unique<ka_snapshot>();
    result<snapshot> r{errc::invalid, "freeze"};
    if (st) {
      auto vs = vmm_state_of(*st, "freeze");
      if (!vs) return fail(s, vs.err());
      r = s->s->freeze(*t, *vs, opt);
    } else {
      r = s->s->freeze(*t, opt);  // close-first: the vCPU state comes after hand_over
    }
    if (!r) return fail(s, r.err());
    snap->snap = std::move(*r);
    *out = snap.release();
    return 0;
  });
}

int ka_snapshot_add_vmm_state(ka_snapshot* snap, const ka_vmm_state* st) {
  if (!snap || !st) return fail(nullptr, errc::invalid, "add_vmm_state: snapshot and state are required");
  return guarded(nullptr, [&]() -> int {
    auto vs = vmm_state_of(*st, "add_vmm_state");
    if (!vs) return fail(nullptr, vs.err());
    return status_to_int(nullptr, add_vmm_state(snap->snap, std::move(*vs)));
  });
}

int ka_session_call_off(ka_session* s, const ka_wiring* w) {
  if (!s) return -EINVAL;
  if (!wiring_ok(w)) return fail(s, errc::invalid, "call_off: wiring needs eventfd and connect");
  return guarded(s, [&]() -> int {
    c_wiring cw{*w};
    return status_to_int(s, s->s->call_off(cw));
  });
}

int ka_session_thaw(ka_session* s) {
  if (!s) return -EINVAL;
  return guarded(s, [&]() -> int { return status_to_int(s, s->s->thaw()); });
}

int ka_session_hand_over(ka_session* s) {
  if (!s) return -EINVAL;
  return guarded(s, [&]() -> int { return status_to_int(s, s->s->hand_over()); });
}

int ka_session_reclaim(ka_session* s, const ka_snapshot* snap, const ka_wiring* w) {
  if (!s) return -EINVAL;
  if (!snap) return fail(s, errc::invalid, "reclaim: no snapshot");
  if (!wiring_ok(w)) return fail(s, errc::invalid, "reclaim: wiring needs eventfd and connect");
  return guarded(s, [&]() -> int {
    c_wiring cw{*w};
    return status_to_int(s, s->s->reclaim(snap->snap, cw));
  });
}

int ka_session_close(ka_session* s) {
  if (!s) return -EINVAL;
  return guarded(s, [&]() -> int { return status_to_int(s, s->s->close()); });
}

int ka_session_fallback_reset(ka_session* s, const char* bdf_text) {
  if (!s) return -EINVAL;
  return guarded(s, [&]() -> int {
    auto b = bdf_text ? bdf::parse(bdf_text) : std::nullopt;
    if (!b) return fail(s, errc::invalid, std::string{"not a PCI address: "} + (bdf_text ? bdf_text : "(null)"));
    return status_to_int(s, s->s->fallback_reset(*b));
  });
}

int ka_session_fallback_reset_all(ka_session* s, const ka_snapshot* snap) {
  if (!s) return -EINVAL;
  if (!snap) return fail(s, errc::invalid, "fallback_reset_all: no snapshot");
  return guarded(s, [&]() -> int { return status_to_int(s, s->s->fallback_reset(snap->snap)); });
}

int ka_session_device_fd(const ka_session* s, std::uint32_t device_index) {
  if (!s) return -EINVAL;
  const int fd = s->s->device_fd(device_index);
  return fd < 0 ? -EBADF : fd;
}

long ka_ioctl(ka_session* s, int fd, unsigned long cmd, void* arg) {
  if (!s) return -EINVAL;
  return s->sys->ioctl(fd, cmd, arg);
}

int ka_sys_open(ka_session* s, const char* path, int flags) {
  if (!s || !path) return -EINVAL;
  return guarded(s, [&]() -> int {
    auto r = s->sys->open(path, flags);
    if (!r) return fail(s, r.err());
    return *r;
  });
}

int ka_sys_close(ka_session* s, int fd) {
  if (!s) return -EINVAL;
  const errc e = s->sys->close(fd);
  return e == errc::ok ? 0 : -static_cast<int>(e);
}

std::int64_t ka_pread(ka_session* s, int fd, void* buf, std::size_t len, std::uint64_t offset) {
  if (!s || (len && !buf)) return -EINVAL;
  return guarded(s, [&]() -> std::int64_t {
    auto r = s->sys->pread(fd, {static_cast<std::byte*>(buf), len}, offset);
    if (!r) return fail(s, r.err());
    return static_cast<std::int64_t>(*r);
  });
}

std::int64_t ka_pwrite(ka_session* s, int fd, const void* buf, std::size_t len, std::uint64_t offset) {
  if (!s || (len && !buf)) return -EINVAL;
  return guarded(s, [&]() -> std::int64_t {
    auto r = s->sys->pwrite(fd, {static_cast<const std::byte*>(buf), len}, offset);
    if (!r) return fail(s, r.err());
    return static_cast<std::int64_t>(*r);
  });
}

int ka_session_timeline(const ka_session* s, ka_mark* out, std::size_t cap, std::size_t* n) {
  if (!s || !n || (cap && !out)) return -EINVAL;
  const auto& marks = s->s->timeline();
  *n = marks.size();
  for (std::size_t i = 0; i < std::min(cap, marks.size()); ++i) {
    out[i].kind = static_cast<std::uint32_t>(marks[i].kind);
    out[i].device = marks[i].device == timing_mark::no_device ? UINT32_MAX : static_cast<std::uint32_t>(marks[i].device);
    out[i].ns = std::chrono::duration_cast<std::chrono::nanoseconds>(marks[i].at.time_since_epoch()).count();
  }
  return cap < marks.size() ? -EOVERFLOW : 0;
}

const char* ka_mark_name(std::uint32_t kind) {
  if (kind > static_cast<std::uint32_t>(mark_kind::rollback)) return "invalid";
  return name(static_cast<mark_kind>(kind)).data();
}

int ka_token_generate(char out[KA_TOKEN_STRLEN]) {
  if (!out) return -EINVAL;
  return guarded(nullptr, [&]() -> int {
    copy_token(token::generate(), out);
    return 0;
  });
}

void ka_snapshot_free(ka_snapshot* snap) { delete snap; }

int ka_snapshot_write_fd(const ka_snapshot* snap, int fd) {
  if (!snap) return -EINVAL;
  return guarded(nullptr, [&]() -> int { return status_to_int(nullptr, write_snapshot(fd, snap->snap)); });
}

int ka_snapshot_read_fd(int fd, ka_snapshot** out) {
  if (!out) return -EINVAL;
  return guarded(nullptr, [&]() -> int {
    auto r = read_snapshot(fd);
    if (!r) return fail(nullptr, r.err());
    auto h = std::make_unique<ka_snapshot>();
    h->snap = std::move(*r);
    *out = h.release();
    return 0;
  });
}

int ka_snapshot_encode(const ka_snapshot* snap, void* buf, std::size_t cap, std::size_t* len) {
  if (!snap || !len || (cap && !buf)) return -EINVAL;
  return guarded(nullptr, [&]() -> int {
    auto bytes = encode_snapshot(snap->snap);
    if (!bytes) return fail(nullptr, bytes.err());
    *len = bytes->size();
    if (cap < bytes->size())
      return fail(nullptr, errc::overflow, "snapshot encode: " + std::to_string(bytes->size()) + " bytes needed");
    std::memcpy(buf, bytes->data(), bytes->size());
    return 0;
  });
}

int ka_snapshot_decode(const void* buf, std::size_t len, ka_snapshot** out) {
  if (!out || (len && !buf)) return -EINVAL;
  return guarded(nullptr, [&]() -> int {
    auto r = decode_snapshot({static_cast<const std::byte*>(buf), len});
    if (!r) return fail(nullptr, r.err());
    auto h = std::make_unique<ka_snapshot>();
    h->snap = std::move(*r);
    *out = h.release();
    return 0;
  });
}

int ka_snapshot_token(const ka_snapshot* snap, char out[KA_TOKEN_STRLEN]) {
  if (!snap || !out) return -EINVAL;
  return guarded(nullptr, [&]() -> int {
    copy_token(snap->snap.owner, out);
    return 0;
  });
}

std::uint32_t ka_snapshot_nr_vcpus(const ka_snapshot* snap) { return snap ? snap->snap.nr_vcpus : 0; }
std::size_t ka_snapshot_nr_devices(const ka_snapshot* snap) { return snap ? snap->snap.devices.size() : 0; }
std::size_t ka_snapshot_nr_ram(const ka_snapshot* snap) { return snap ? snap->snap.ram.size() : 0; }

int ka_snapshot_device(const ka_snapshot* snap, std::size_t index, ka_device_info* out) {
  if (!snap || !out || index >= snap->snap.devices.size()) return -EINVAL;
  const auto& d = snap->snap.devices[index];
  out->bdf = d.address.packed();
  out->iommu_group = d.group;
  out->irq_mode = static_cast<std::uint32_t>(d.mode);
  out->nr_vectors = static_cast<std::uint32_t>(d.vectors.size());
  return 0;
}

int ka_snapshot_vector(const ka_snapshot* snap, std::size_t device, std::size_t index, ka_vector_info* out) {
  if (!snap || !out || device >= snap->snap.devices.size() || index >= snap->snap.devices[device].vectors.size())
    return -EINVAL;
  const auto& v = snap->snap.devices[device].vectors[index];
  *out = {};
  out->msix_index = v.msix.value();
  out->guest_vector = v.guest_vector.value();
  out->vcpu = v.vcpu;
  return 0;
}

int ka_snapshot_ram(const ka_snapshot* snap, std::size_t index, ka_ram_region* out) {
  if (!snap || !out || index >= snap->snap.ram.size()) return -EINVAL;
  const auto& r = snap->snap.ram[index];
  out->gpa = r.guest.value();
  out->iova = r.io.value();
  out->size = r.bytes;
  out->vaddr = r.vaddr;
  out->backing = r.backing.c_str();
  out->backing_offset = r.backing_offset;
  return 0;
}

int ka_snapshot_set_ram_vaddr(ka_snapshot* snap, std::size_t index, std::uint64_t vaddr) {
  if (!snap || index >= snap->snap.ram.size() || vaddr % 4096 != 0) return -EINVAL;
  snap->snap.ram[index].vaddr = vaddr;
  return 0;
}

int ka_snapshot_vcpu_state(const ka_snapshot* snap, std::uint32_t vcpu, std::uint32_t tag, const void** data,
                           std::size_t* len) {
  if (!snap || !data || !len) return -EINVAL;
  const auto* b = snap->snap.find(vcpu, static_cast<vcpu_state_tag>(tag));
  if (!b) return -ENOENT;
  *data = b->bytes.data();
  *len = b->bytes.size();
  return 0;
}

int ka_snapshot_extra(const ka_snapshot* snap, const void** data, std::size_t* len) {
  if (!snap || !data || !len) return -EINVAL;
  *data = snap->snap.extra.data();
  *len = snap->snap.extra.size();
  return 0;
}

const char* ka_snapshot_describe(ka_snapshot* snap) {
  if (!snap) return "";
  try {
    snap->text = describe(snap->snap);
  } catch (...) {
    snap->text.clear();
  }
  return snap->text.c_str();
}

}  // extern "C"
