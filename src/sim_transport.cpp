// Client side of the keepalive-simd wire protocol (kernel/sim/daemon/wire.hpp).
#include "keepalive/sim_transport.hpp"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../kernel/sim/daemon/wire.hpp"

namespace keepalive {
namespace {
namespace wire = simd::wire;
constexpr long io_error = -static_cast<long>(errc::io);

result<std::string> read_text_file(int fd, std::uint64_t len) {
  std::string text(static_cast<std::size_t>(len), '\0');
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pread(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return {errc::io, "short text reply"};
    done += static_cast<std::size_t>(n);
  }
  return text;
}
}  // namespace

std::string sim_transport::default_socket_path() {
  if (const char* env = std::getenv(wire::socket_env); env && *env) return env;
  return wire::default_socket_path;
}

result<std::unique_ptr<sim_transport>> sim_transport::connect(std::string_view path_in) {
  const std::string path = path_in.empty() ? default_socket_path() : std::string{path_in};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return {errc::invalid, "socket path too long: " + path};
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  wire::unique_fd sock{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
  if (!sock) return {errc_from_errno(errno), "socket"};
  if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0)
    return {errc_from_errno(errno), "connect " + path};

  std::unique_ptr<sim_transport> t{new sim_transport{sock.release(), -1, {}}};
  std::vector<std::byte> reply;
  int memfd = -1;
  const long rc = t->call(static_cast<std::uint16_t>(wire::op::hello), -1, 0, 0, {}, {}, &reply, &memfd);
  wire::unique_fd phys{memfd};
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), "hello " + path};
  wire::hello_reply h{};
  if (reply.size() != sizeof h || !phys) return {errc::protocol, "hello: malformed reply"};
  std::memcpy(&h, reply.data(), sizeof h);
  if (h.protocol_version != wire::version) return {errc::protocol, "hello: protocol version mismatch"};
  struct stat sb {};
  if (::fstat(phys.get(), &sb) < 0 || static_cast<std::uint64_t>(sb.st_size) != h.phys_bytes)
    return {errc::protocol, "hello: memfd size does not match"};
  sim_host_info& info = t->host_;
  info.abi_version = h.abi_version;
  info.baseline = h.mode == static_cast<std::uint32_t>(wire::host_mode::baseline);
  info.posted_interrupts = h.posted_interrupts != 0;
  info.phys_bytes = h.phys_bytes;
  info.guest_start = h.guest_start;
  info.handover_start = h.handover_start;
  info.handover_bytes = h.handover_bytes;
  for (std::uint32_t i = 0; i < std::min<std::uint32_t>(h.nr_functions, wire::max_functions); ++i)
    info.functions.push_back(bdf::from_packed(h.functions[i]));
  t->phys_fd_ = phys.release();
  return t;
}

sim_transport::~sim_transport() {
  for (auto& m : maps_) ::munmap(m.base, m.len);
  if (phys_fd_ >= 0) ::close(phys_fd_);
  if (sock_ >= 0) ::close(sock_);
}

long sim_transport::call(std::uint16_t op, int fd, std::uint64_t cmd, std::uint64_t arg,
                         std::span<const std::byte> payload, std::span<const int> files,
                         std::vector<std::byte>* reply_payload, int* reply_file) {
  wire::request_hdr h{};
  h.magic = wire::magic;
  h.version = wire::version;
  h.op = op;
  h.fd = fd;
  h.payload_bytes = static_cast<std::uint32_t>(payload.size());
  h.cmd = cmd;
  h.arg = arg;
  const std::span<const std::byte> parts[2] = {std::as_bytes(std::span{&h, 1}), payload};

  std::lock_guard lock{mu_};
  if (const int e = wire::send_message(sock_, parts, files); e != 0)
    return e == EBADF && !files.empty() ? -EBADF : io_error;  // EBADF: a file to pass is not open
  auto& buf = reply_buf_;
  buf.resize(sizeof(wire::reply_hdr) + wire::max_reply_payload);
  wire::received msg;
  if (wire::receive_message(sock_, buf, msg) != 0 || msg.truncated || msg.bytes < sizeof(wire::reply_hdr))
    return io_error;
  wire::reply_hdr r{};
  std::memcpy(&r, buf.data(), sizeof r);
  if (r.magic != wire::magic || r.version != wire::version || r.op != op ||
      r.payload_bytes != msg.bytes - sizeof r)
    return io_error;
  const bool want_file = (r.flags & wire::reply_fd_attached) != 0;
  if (want_file != (msg.fds.size() == 1) || msg.fds.size() > 1) return io_error;
  if (reply_payload) reply_payload->assign(buf.begin() + sizeof r, buf.begin() + static_cast<std::ptrdiff_t>(msg.bytes));
  if (want_file && reply_file) *reply_file = msg.fds.front().release();
  return static_cast<long>(r.result);
}

// ---------------------------------------------------------------- ioctl

long sim_transport::ioctl(int fd, unsigned long cmd, void* arg) { return call_ioctl(fd, cmd, arg); }

long sim_transport::call_ioctl(int fd, unsigned long cmd, void* arg) {
  const auto op = static_cast<std::uint16_t>(wire::op::ioctl);
  const auto cls = wire::classify(cmd);
  using wire::arg_kind;
  switch (cls.kind) {
    case arg_kind::not_carried:
    case arg_kind::none: return call(op, fd, cmd, 0, {}, {}, nullptr, nullptr);
    case arg_kind::integer:
      return call(op, fd, cmd, static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(arg)), {}, {}, nullptr,
                  nullptr);
    case arg_kind::int_in: {
      if (!arg) return -EFAULT;
      int v;
      std::memcpy(&v, arg, sizeof v);
      return call(op, fd, cmd, static_cast<std::uint64_t>(static_cast<std::int64_t>(v)), {}, {}, nullptr, nullptr);
    }
    case arg_kind::string: {
      if (!arg) return -EFAULT;
      const std::size_t n = ::strnlen(static_cast<const char*>(arg), wire::max_path);
      if (n == wire::max_path) return -EINVAL;
      return call(op, fd, cmd, 0, std::span{static_cast<const std::byte*>(arg), n + 1}, {}, nullptr, nullptr);
    }
    case arg_kind::size_first:
    case arg_kind::argsz_first: break;
  }

  if (!arg) return -EFAULT;
  auto* user = static_cast<std::byte*>(arg);
  std::uint32_t declared;
  std::memcpy(&declared, user, sizeof declared);
  const std::size_t bytes = wire::struct_wire_bytes(declared);
  if (bytes > wire::max_payload) return -E2BIG;
  const std::vector<std::byte> orig(user, user + bytes);
  std::vector<std::byte> req{orig};
  const std::span<std::byte> rq{req};

  // Marshal pointers and files (wire.hpp, "Marshalled fields").
  std::vector<std::size_t> restore;  // fields (restore_width bytes) to restore from `orig`
  std::vector<int> files;
  std::size_t restore_width = 0;
  if (cmd == VFIO_IOMMU_MAP_DMA && bytes >= wire::map_dma_vaddr_offset + sizeof(std::uint64_t)) {
    const auto vaddr = wire::load<std::uint64_t>(rq, wire::map_dma_vaddr_offset);
    const std::size_t size_end = offsetof(vfio_iommu_type1_dma_map, size) + sizeof(std::uint64_t);
    const std::uint64_t size = bytes >= size_end ? wire::load<std::uint64_t>(rq, size_end - 8) : 0;
    if (auto off = phys_offset(reinterpret_cast<const void*>(static_cast<std::uintptr_t>(vaddr)), std::max<std::uint64_t>(size, 1)))
      wire::store(rq, wire::map_dma_vaddr_offset, *off);
    restore = {wire::map_dma_vaddr_offset};
    restore_width = sizeof(std::uint64_t);
  } else if (cmd == VFIO_DEVICE_SET_IRQS || (cmd == KA_SIM_IRQ_BYPASS && bytes >= wire::bypass_irqfd_offset + 4)) {
    const auto slots = cmd == VFIO_DEVICE_SET_IRQS ? wire::irq_set_fd_slots(rq)
                                                   : std::vector<std::size_t>{wire::bypass_irqfd_offset};
    for (std::size_t off : slots) {
      const auto v = wire::load<std::int32_t>(rq, off);
      if (v < 0) continue;
      auto it = std::find(files.begin(), files.end(), v);
      if (it == files.end()) {
        if (files.size() == wire::max_fds) return -EINVAL;
        files.push_back(v);
        it = files.end() - 1;
      }
      wire::store(rq, off, static_cast<std::int32_t>(it - files.begin()));
    }
    restore = slots;
    restore_width = sizeof(std::int32_t);
  }

  std::vector<std::byte> reply;
  const long rc = call(op, fd, cmd, 0, rq, files, &reply, nullptr);
  if (reply.empty() && rc < 0) return rc;  // refused before the call (or the host is gone)
  if (reply.size() < bytes) return io_error;
  // Outputs back into the caller's struct, then the caller's own values into
  // the marshalled fields.
  std::memcpy(user, reply.data(), bytes);
  for (std::size_t off : restore) std::memcpy(user + off, orig.data() + off, restore_width);
  if (cmd == VFIO_KEEPALIVE_LIST_DEVICES && rc == 0 && bytes >= wire::list_uptr_offset + sizeof(std::uint64_t)) {
    const auto capacity = wire::load<std::uint32_t>(std::span<const std::byte>{orig}, wire::list_nr_entries_offset);
    const auto n = wire::load<std::uint32_t>(std::span<const std::byte>{reply}, wire::list_nr_entries_offset);
    const auto uptr = wire::load<std::uint64_t>(std::span<const std::byte>{orig}, wire::list_uptr_offset);
    constexpr std::size_t row = sizeof(vfio_keepalive_device_entry);
    if (n > capacity || (reply.size() - bytes) != std::size_t{n} * row || (n != 0 && uptr == 0)) return io_error;
    if (n) std::memcpy(reinterpret_cast<void*>(static_cast<std::uintptr_t>(uptr)), reply.data() + bytes, n * row);
  }
  return rc;
}

// ---------------------------------------------------------------- files

result<int> sim_transport::open(std::string_view path, int flags) {
  if (path.empty() || path.size() > wire::max_path) return {errc::invalid, "open: path length"};
  const long rc = call(static_cast<std::uint16_t>(wire::op::open), -1, static_cast<std::uint64_t>(flags), 0,
                       std::as_bytes(std::span{path.data(), path.size()}), {}, nullptr, nullptr);
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), "open " + std::string{path}};
  return static_cast<int>(rc);
}

errc sim_transport::close(int fd) {
  const long rc = call(static_cast<std::uint16_t>(wire::op::close), fd, 0, 0, {}, {}, nullptr, nullptr);
  return rc < 0 ? errc_from_errno(static_cast<int>(-rc)) : errc::ok;
}

result<std::size_t> sim_transport::pread(int fd, std::span<std::byte> out, std::uint64_t offset) {
  const std::size_t n = std::min(out.size(), wire::max_payload);
  std::vector<std::byte> reply;
  const long rc = call(static_cast<std::uint16_t>(wire::op::pread), fd, n, offset, {}, {}, &reply, nullptr);
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), "pread"};
  if (static_cast<std::size_t>(rc) != reply.size() || reply.size() > n) return {errc::io, "pread: malformed reply"};
  std::memcpy(out.data(), reply.data(), reply.size());
  return reply.size();
}

result<std::size_t> sim_transport::pwrite(int fd, std::span<const std::byte> in, std::uint64_t offset) {
  const auto part = in.first(std::min(in.size(), wire::max_payload));
  const long rc = call(static_cast<std::uint16_t>(wire::op::pwrite), fd, 0, offset, part, {}, nullptr, nullptr);
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), "pwrite"};
  return static_cast<std::size_t>(rc);
}

// ---------------------------------------------------------------- memory

void* sim_transport::map_phys(std::uint64_t offset, std::uint64_t len) {
  if (len == 0 || offset > host_.phys_bytes || len > host_.phys_bytes - offset) {
    errno = EINVAL;
    return nullptr;
  }
  void* p = ::mmap(nullptr, static_cast<std::size_t>(len), PROT_READ | PROT_WRITE, MAP_SHARED, phys_fd_,
                   static_cast<off_t>(offset));
  if (p == MAP_FAILED) return nullptr;
  std::lock_guard lock{maps_mu_};
  maps_.push_back({static_cast<std::byte*>(p), offset, len});
  return p;
}

void sim_transport::unmap_phys(void* addr) {
  std::lock_guard lock{maps_mu_};
  for (auto it = maps_.begin(); it != maps_.end(); ++it)
    if (it->base == addr) {
      ::munmap(it->base, it->len);
      maps_.erase(it);
      return;
    }
}

std::optional<std::uint64_t> sim_transport::phys_offset(const void* addr, std::uint64_t len) const {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::lock_guard lock{maps_mu_};
  for (const auto& m : maps_) {
    const auto base = reinterpret_cast<std::uintptr_t>(m.base);
    if (a >= base && a - base <= m.len && len <= m.len - (a - base)) return m.offset + (a - base);
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- control

status sim_transport::kexec() {
  const long rc = call(static_cast<std::uint16_t>(wire::op::kexec), -1, 0, 0, {}, {}, nullptr, nullptr);
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), "kexec"};
  return {};
}

result<std::string> sim_transport::text_request(std::uint16_t op, const char* what) {
  int file = -1;
  const long rc = call(op, -1, 0, 0, {}, {}, nullptr, &file);
  wire::unique_fd f{file};
  if (rc < 0) return {errc_from_errno(static_cast<int>(-rc)), what};
  if (!f) return {errc::io, std::string{what} + ": no text file in the reply"};
  return read_text_file(f.get(), static_cast<std::uint64_t>(rc));
}

result<std::string> sim_transport::stats_json() { return text_request(static_cast<std::uint16_t>(wire::op::stats), "stats"); }
result<std::string> sim_transport::describe() {
  return text_request(static_cast<std::uint16_t>(wire::op::describe), "describe");
}

}  // namespace keepalive
