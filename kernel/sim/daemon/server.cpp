#include "server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <list>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "wire.hpp"

namespace keepalive::simd {
namespace {

using wire::unique_fd;

long neg(errc e) { return -static_cast<long>(e); }

bool is_eventfd(int fd) {
  char path[64], target[64]{};
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(path, target, sizeof target - 1);
  return n > 0 && std::string_view{target, static_cast<std::size_t>(n)} == "anon_inode:[eventfd]";
}

// A sealed memfd holding `text`.
result<unique_fd> text_file(const std::string& text) {
  unique_fd fd{::memfd_create("keepalive-simd-text", MFD_CLOEXEC | MFD_ALLOW_SEALING)};
  if (!fd) return {errc_from_errno(errno), "memfd_create"};
  for (std::size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return {errc::no_memory, "memfd write"};
    done += static_cast<std::size_t>(n);
  }
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
    return {errc_from_errno(errno), "memfd seal"};
  return fd;
}

struct connection {
  std::uint64_t id = 0;
  int fd = -1;                         // guarded by conns_mu (closed by the connection's thread)
  std::string name;
  std::shared_ptr<sim::process> proc;  // guarded by host_mu
  std::atomic<bool> done{false};
  std::thread thread;
};

struct reply {
  long result = 0;
  std::vector<std::byte> payload;
  unique_fd file;
};

}  // namespace

struct server::state {
  server_config cfg;
  sim::kernel_config kcfg;
  std::unique_ptr<sim::platform> plat;
  // Shared by every request that uses the kernel; exclusive for spawning a
  // process (kernel::spawn is not internally locked) and for kexec.
  std::shared_mutex host_mu;
  std::unique_ptr<sim::kernel> kernel;
  unique_fd listen_fd, wake_fd;
  ino_t socket_ino = 0;
  std::atomic<bool> stopping{false};
  mutable std::mutex conns_mu;
  std::list<std::unique_ptr<connection>> conns;
  std::uint64_t next_id = 1;

  void serve(connection& c);
  reply handle(connection& c, const wire::request_hdr& h, std::span<const std::byte> payload,
               std::vector<unique_fd>& fds);
  long do_ioctl(sim::process& p, const wire::request_hdr& h, std::span<const std::byte> in,
                std::vector<unique_fd>& fds, std::vector<std::byte>& out);
  long do_kexec(connection& self);
  std::string stats_json();
  void drop_all();
  void reap(bool all);
};

// ---------------------------------------------------------------- ioctl

long server::state::do_ioctl(sim::process& p, const wire::request_hdr& h, std::span<const std::byte> in,
                             std::vector<unique_fd>& fds, std::vector<std::byte>& out) {
  const auto cmd = static_cast<unsigned long>(h.cmd);
  const auto cls = wire::classify(cmd);
  using wire::arg_kind;
  switch (cls.kind) {
    case arg_kind::not_carried:
      return fds.empty() ? neg(errc::not_tty) : neg(errc::invalid);
    case arg_kind::none:
      if (!in.empty() || !fds.empty()) return neg(errc::invalid);
      return p.ioctl(h.fd, cmd, nullptr);
    case arg_kind::integer:
      if (!in.empty() || !fds.empty()) return neg(errc::invalid);
      return p.ioctl(h.fd, cmd, reinterpret_cast<void*>(static_cast<std::uintptr_t>(h.arg)));
    case arg_kind::int_in: {
      if (!in.empty() || !fds.empty()) return neg(errc::invalid);
      const auto v = static_cast<std::int64_t>(h.arg);
      if (v < INT_MIN || v > INT_MAX) return neg(errc::bad_fd);
      int fd_arg = static_cast<int>(v);
      return p.ioctl(h.fd, cmd, &fd_arg);
    }
    case arg_kind::string: {
      if (in.empty() || in.size() > wire::max_path || in.back() != std::byte{0} || !fds.empty())
        return neg(errc::invalid);
      std::vector<char> name(in.size());
      std::memcpy(name.data(), in.data(), in.size());
      return p.ioctl(h.fd, cmd, name.data());
    }
    case arg_kind::size_first:
    case arg_kind::argsz_first: break;
  }

  // A struct: never trust its length field beyond the bytes received.
  if (in.size() < sizeof(std::uint32_t)) return neg(errc::fault);
  const auto declared = wire::load<std::uint32_t>(in, 0);
  if (declared > in.size()) return neg(errc::fault);
  if (wire::struct_wire_bytes(declared) != in.size()) return neg(errc::invalid);
  std::vector<std::byte> buf(std::max<std::size_t>(in.size(), cls.struct_size));
  std::memcpy(buf.data(), in.data(), in.size());
  const std::span<std::byte> wire_bytes{buf.data(), in.size()};

  // Substitute the daemon's files / memory for the wire values; restored before replying.
  std::vector<std::pair<std::size_t, std::int32_t>> fd_slots;  // offset, wire value
  std::vector<bool> referenced(fds.size(), false);
  auto take_fd = [&](std::size_t off) -> errc {
    const auto v = wire::load<std::int32_t>(wire_bytes, off);
    if (v < 0) return errc::ok;
    if (static_cast<std::size_t>(v) >= fds.size() || !is_eventfd(fds[static_cast<std::size_t>(v)].get()))
      return errc::bad_fd;
    referenced[static_cast<std::size_t>(v)] = true;
    fd_slots.emplace_back(off, v);
    wire::store(wire_bytes, off, std::int32_t{fds[static_cast<std::size_t>(v)].get()});
    return errc::ok;
  };
  const bool is_list = cmd == VFIO_KEEPALIVE_LIST_DEVICES && in.size() >= wire::list_uptr_offset + sizeof(std::uint64_t);
  std::vector<vfio_keepalive_device_entry> rows;
  std::uint32_t list_capacity = 0;
  std::uint64_t list_uptr = 0;
  if (cmd == VFIO_DEVICE_SET_IRQS) {
    for (std::size_t off : wire::irq_set_fd_slots(wire_bytes))
      if (const errc e = take_fd(off); e != errc::ok) return neg(e);
  } else if (cmd == KA_SIM_IRQ_BYPASS && in.size() >= wire::bypass_irqfd_offset + sizeof(std::int32_t)) {
    if (const errc e = take_fd(wire::bypass_irqfd_offset); e != errc::ok) return neg(e);
  } else if (is_list) {
    list_capacity = wire::load<std::uint32_t>(wire_bytes, wire::list_nr_entries_offset);
    list_uptr = wire::load<std::uint64_t>(wire_bytes, wire::list_uptr_offset);
    const std::uint32_t rows_n = std::min(list_capacity, wire::max_list_entries);
    rows.resize(std::max<std::uint32_t>(rows_n, 1));
    wire::store(wire_bytes, wire::list_nr_entries_offset, rows_n);
    if (list_uptr != 0)
      wire::store(wire_bytes, wire::list_uptr_offset, static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(rows.data())));
  }
  for (bool r : referenced)
    if (!r) return neg(errc::invalid);  // a file nobody refers to

  const long rc = p.ioctl(h.fd, cmd, buf.data());

  for (auto [off, v] : fd_slots) wire::store(wire_bytes, off, v);
  std::size_t rows_out = 0;
  if (is_list) {
    wire::store(wire_bytes, wire::list_uptr_offset, list_uptr);
    if (rc == 0)
      rows_out = std::min<std::size_t>(wire::load<std::uint32_t>(wire_bytes, wire::list_nr_entries_offset), rows.size());
    else if (rc != neg(errc::overflow))
      wire::store(wire_bytes, wire::list_nr_entries_offset, list_capacity);
  }
  out.assign(wire_bytes.begin(), wire_bytes.end());
  if (rows_out) {
    const auto* r = reinterpret_cast<const std::byte*>(rows.data());
    out.insert(out.end(), r, r + rows_out * sizeof(vfio_keepalive_device_entry));
  }
  return rc;
}

// ---------------------------------------------------------------- requests

reply server::state::handle(connection& c, const wire::request_hdr& h, std::span<const std::byte> payload,
                            std::vector<unique_fd>& fds) {
  reply r;
  const auto o = static_cast<wire::op>(h.op);
  const bool takes_files = o == wire::op::ioctl;
  if (!takes_files && !fds.empty()) {
    r.result = neg(errc::invalid);
    return r;
  }
  switch (o) {
    case wire::op::hello: {
      if (!payload.empty()) break;
      wire::hello_reply hr{};
      hr.protocol_version = wire::version;
      hr.abi_version = VFIO_KEEPALIVE_ABI_VERSION;
      hr.mode = static_cast<std::uint32_t>(kcfg.mode == sim::kernel_mode::baseline ? wire::host_mode::baseline
                                                                                     : wire::host_mode::keepalive);
      hr.posted_interrupts = plat->posted_interrupts() ? 1u : 0u;
      hr.phys_bytes = plat->memory().size();
      hr.guest_start = kcfg.map.guest_start();
      hr.handover_start = kcfg.map.handover_start();
      hr.handover_bytes = kcfg.map.handover_bytes();
      for (const auto& f : plat->functions())
        if (hr.nr_functions < wire::max_functions) hr.functions[hr.nr_functions++] = f->address().packed();
      const auto* b = reinterpret_cast<const std::byte*>(&hr);
      r.payload.assign(b, b + sizeof hr);
      r.file = unique_fd{::fcntl(plat->memory().fd(), F_DUPFD_CLOEXEC, 0)};
      if (!r.file) {
        r.payload.clear();
        r.result = -errno;
      }
      return r;
    }
    case wire::op::kexec:
      if (!payload.empty()) break;
      r.result = do_kexec(c);
      return r;
    default: break;
  }

  std::shared_lock host{host_mu};
  if (!c.proc && (o == wire::op::open || o == wire::op::close || o == wire::op::ioctl || o == wire::op::pread ||
                  o == wire::op::pwrite)) {
    r.result = neg(errc::io);
    return r;
  }
  switch (o) {
    case wire::op::open: {
      if (payload.empty() || payload.size() > wire::max_path) break;
      const std::string path{reinterpret_cast<const char*>(payload.data()), payload.size()};
      if (path.find('\0') != std::string::npos) break;
      auto fd = c.proc->open(path, static_cast<int>(h.cmd));
      r.result = fd ? *fd : neg(fd.code());
      return r;
    }
    case wire::op::close:
      if (!payload.empty()) break;
      r.result = neg(c.proc->close(h.fd));
      return r;
    case wire::op::ioctl:
      r.result = do_ioctl(*c.proc, h, payload, fds, r.payload);
      return r;
    case wire::op::pread: {
      if (!payload.empty() || h.cmd > wire::max_payload) break;
      r.payload.resize(static_cast<std::size_t>(h.cmd));
      auto n = c.proc->pread(h.fd, r.payload, h.arg);
      if (!n) {
        r.payload.clear();
        r.result = neg(n.code());
      } else {
        r.payload.resize(*n);
        r.result = static_cast<long>(*n);
      }
      return r;
    }
    case wire::op::pwrite: {
      auto n = c.proc->pwrite(h.fd, payload, h.arg);
      r.result = n ? static_cast<long>(*n) : neg(n.code());
      return r;
    }
    case wire::op::stats:
    case wire::op::describe: {
      if (!payload.empty()) break;
      if (!kernel) {
        r.result = neg(errc::io);
        return r;
      }
      const std::string text = o == wire::op::stats ? stats_json() : kernel->describe();
      auto f = text_file(text);
      if (!f) {
        r.result = neg(f.code());
        return r;
      }
      r.file = std::move(*f);
      r.result = static_cast<long>(text.size());
      return r;
    }
    default: break;
  }
  r.result = neg(errc::invalid);
  return r;
}

long server::state::do_kexec(connection& self) {
  // Processes do not survive a kexec: stop the others from issuing requests,
  // wait for the requests in flight, then make their processes exit.
  {
    std::lock_guard l{conns_mu};
    for (auto& o : conns)
      if (o.get() != &self && o->fd >= 0) ::shutdown(o->fd, SHUT_RDWR);
  }
  std::unique_lock host{host_mu};
  {
    std::lock_guard l{conns_mu};
    for (auto& o : conns) {
      if (o.get() == &self) continue;
      if (o->fd >= 0) ::shutdown(o->fd, SHUT_RDWR);
      if (o->proc) o->proc->exit();
      o->proc.reset();
    }
  }
  if (self.proc) self.proc->exit();
  self.proc.reset();
  if (!kernel) return neg(errc::io);
  auto next = sim::kexec(std::move(kernel));
  if (!next) {
    std::fprintf(stderr, "keepalive-simd: kexec failed: %s\n", next.err().message().c_str());
    return neg(next.code());
  }
  kernel = std::move(*next);
  self.proc = kernel->spawn(self.name);
  std::fprintf(stderr, "keepalive-simd: kexec done, generation %llu\n",
               static_cast<unsigned long long>(kernel->stats().generation));
  return 0;
}

std::string server::state::stats_json() {
  const auto io = plat->vtd().counters();
  std::string s = fmt::format(
      "{{\"iommu\":{{\"dma_ok\":{},\"dma_faults\":{},\"irq_remapped\":{},\"irq_posted\":{},"
      "\"irq_notifications\":{},\"ir_faults\":{},\"irq_no_cpu\":{}}},\"nics\":[",
      io.dma_ok, io.dma_faults, io.irq_remapped, io.irq_posted, io.irq_notifications, io.ir_faults, io.irq_no_cpu);
  bool first = true;
  for (const auto& f : plat->functions()) {
    auto* n = plat->find_nic(f->address());
    if (!n) continue;
    const auto ns = n->stats();
    s += fmt::format(
        "{}{{\"bdf\":\"{}\",\"packets\":{},\"drops\":{},\"irqs\":{},\"irqs_masked\":{},\"dma_errors\":{},"
        "\"next_seq\":{},\"resets\":{}}}",
        first ? "" : ",", f->address().to_string(), ns.packets, ns.drops, ns.irqs, ns.irqs_masked, ns.dma_errors,
        ns.next_seq, ns.resets);
    first = false;
  }
  const auto ks = kernel->stats();
  std::size_t live = 0;
  {
    std::lock_guard l{conns_mu};
    for (auto& c : conns) live += !c->done.load();
  }
  s += fmt::format(
      "],\"kernel\":{{\"device_resets\":{},\"eventfd_signals\":{},\"irqfd_signals\":{},\"notifications\":{},"
      "\"spurious\":{},\"preserved_drained\":{},\"handover_rejected\":{},\"generation\":{}}},\"connections\":{}}}\n",
      ks.device_resets, ks.eventfd_signals, ks.irqfd_signals, ks.notifications, ks.spurious, ks.preserved_drained,
      ks.handover_rejected, ks.generation, live);
  return s;
}

// ---------------------------------------------------------------- connections

void server::state::serve(connection& c) {
  {
    std::unique_lock host{host_mu};
    if (kernel) c.proc = kernel->spawn(c.name);
  }
  std::vector<std::byte> in(sizeof(wire::request_hdr) + wire::max_payload);
  for (;;) {
    wire::received msg;
    if (wire::receive_message(c.fd, in, msg) != 0) break;
    if (msg.bytes == 0 && !msg.truncated) break;  // peer closed
    wire::request_hdr h{};
    const bool has_hdr = msg.bytes >= sizeof h;
    if (has_hdr) std::memcpy(&h, in.data(), sizeof h);
    reply r;
    if (msg.truncated) {
      r.result = neg(errc::too_big);
    } else if (msg.fds_truncated || !has_hdr) {
      r.result = neg(errc::invalid);
    } else if (h.magic != wire::magic || h.version != wire::version) {
      r.result = neg(errc::protocol);
    } else if (h.payload_bytes != msg.bytes - sizeof h) {
      r.result = neg(errc::invalid);
    } else {
      r = handle(c, h, std::span<const std::byte>{in}.subspan(sizeof h, h.payload_bytes), msg.fds);
    }
    msg.fds.clear();  // the kernel dup'ed whatever it keeps
    wire::reply_hdr rh{};
    rh.magic = wire::magic;
    rh.version = wire::version;
    rh.op = (has_hdr && h.magic == wire::magic) ? h.op : std::uint16_t{0};
    rh.result = r.result;
    rh.payload_bytes = static_cast<std::uint32_t>(r.payload.size());
    rh.flags = r.file ? wire::reply_fd_attached : 0u;
    const std::span<const std::byte> parts[2] = {std::as_bytes(std::span{&rh, 1}), r.payload};
    const int file = r.file.get();
    if (wire::send_message(c.fd, parts, r.file ? std::span<const int>{&file, 1} : std::span<const int>{}) != 0) break;
  }
  {
    std::shared_lock host{host_mu};
    if (c.proc) c.proc->exit();  // SIGKILL and exit look the same: the fds close
    c.proc.reset();
  }
  {
    std::lock_guard l{conns_mu};
    ::close(c.fd);
    c.fd = -1;
  }
  c.done = true;
}

void server::state::drop_all() {
  std::lock_guard l{conns_mu};
  for (auto& c : conns)
    if (c->fd >= 0) ::shutdown(c->fd, SHUT_RDWR);
}

void server::state::reap(bool all) {
  std::list<std::unique_ptr<connection>> finished;
  {
    std::lock_guard l{conns_mu};
    for (auto it = conns.begin(); it != conns.end();) {
      if (all || (*it)->done.load()) {
        finished.push_back(std::move(*it));
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : finished) c->thread.join();
}

// ---------------------------------------------------------------- server

server::server(std::unique_ptr<state> s) : s_{std::move(s)} {}

result<std::unique_ptr<server>> server::start(const server_config& cfg) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (cfg.socket_path.empty() || cfg.socket_path.size() >= sizeof addr.sun_path)
    return {errc::invalid, "socket path empty or longer than sun_path"};
  std::memcpy(addr.sun_path, cfg.socket_path.c_str(), cfg.socket_path.size() + 1);
  if (cfg.phys_mib % 2 != 0) return {errc::invalid, "--phys-mib must be a multiple of 2"};
  if (cfg.nics > wire::max_functions) return {errc::invalid, fmt::format("at most {} NICs", wire::max_functions)};

  auto st = std::make_unique<state>();
  st->cfg = cfg;
  st->kcfg.mode = cfg.mode;
  sim::platform_config pc;
  pc.phys_bytes = cfg.phys_mib << 20;
  pc.nics = cfg.nics;
  pc.posted_interrupts = cfg.posted_interrupts;
  auto plat = sim::platform::create(pc);
  if (!plat) return plat.err();
  st->plat = std::move(*plat);
  auto k = sim::kernel::boot(*st->plat, st->kcfg);
  if (!k) return k.err();
  st->kernel = std::move(*k);

  // A socket file nobody answers on is stale; a live one belongs to another daemon.
  struct stat sb {};
  if (::lstat(addr.sun_path, &sb) == 0) {
    if (!S_ISSOCK(sb.st_mode)) return {errc::busy, cfg.socket_path + " exists and is not a socket"};
    unique_fd probe{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
    if (probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0)
      return {errc::busy, cfg.socket_path + " is served by a running daemon"};
    ::unlink(addr.sun_path);
  }
  st->listen_fd = unique_fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
  if (!st->listen_fd) return {errc_from_errno(errno), "socket"};
  if (::bind(st->listen_fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0)
    return {errc_from_errno(errno), "bind " + cfg.socket_path};
  if (::lstat(addr.sun_path, &sb) == 0) st->socket_ino = sb.st_ino;
  if (::listen(st->listen_fd.get(), 64) < 0) return {errc_from_errno(errno), "listen"};
  st->wake_fd = unique_fd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  if (!st->wake_fd) return {errc_from_errno(errno), "eventfd"};
  return std::unique_ptr<server>{new server{std::move(st)}};
}

server::~server() {
  stop();
  s_->drop_all();
  s_->reap(true);
  {
    std::unique_lock host{s_->host_mu};
    s_->kernel.reset();  // the kexec shutdown path, with nobody to kexec into
  }
  s_->plat.reset();
  struct stat sb {};
  if (::lstat(s_->cfg.socket_path.c_str(), &sb) == 0 && sb.st_ino == s_->socket_ino)
    ::unlink(s_->cfg.socket_path.c_str());
}

void server::run() {
  auto& s = *s_;
  while (!s.stopping.load()) {
    pollfd p[2] = {{s.listen_fd.get(), POLLIN, 0}, {s.wake_fd.get(), POLLIN, 0}};
    const int n = ::poll(p, 2, 200);
    s.reap(false);
    if (n <= 0 || !(p[0].revents & POLLIN)) continue;
    const int fd = ::accept4(s.listen_fd.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    auto c = std::make_unique<connection>();
    ucred cred{};
    socklen_t len = sizeof cred;
    const bool known = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    std::lock_guard l{s.conns_mu};
    c->id = s.next_id++;
    c->fd = fd;
    c->name = known ? fmt::format("conn{}-pid{}", c->id, cred.pid) : fmt::format("conn{}", c->id);
    connection& ref = *c;
    s.conns.push_back(std::move(c));
    ref.thread = std::thread{[&s, &ref] { s.serve(ref); }};
  }
  s.drop_all();
  s.reap(true);
}

void server::stop() noexcept {
  s_->stopping = true;
  const std::uint64_t one = 1;
  (void)!::write(s_->wake_fd.get(), &one, sizeof one);
}

const std::string& server::socket_path() const noexcept { return s_->cfg.socket_path; }
sim::platform& server::hardware() noexcept { return *s_->plat; }
std::size_t server::live_connections() const {
  std::lock_guard l{s_->conns_mu};
  std::size_t n = 0;
  for (auto& c : s_->conns) n += !c->done.load();
  return n;
}

}  // namespace keepalive::simd
