// The keepalive-simd wire protocol, shared by the daemon (kernel/sim/daemon)
// and the client (src/sim_transport.cpp).
//
// Transport. A Unix SOCK_SEQPACKET socket, default /run/keepalive-simd.sock,
// overridden by $KEEPALIVE_SIMD_SOCKET (client) and --socket (daemon, tools).
// Every request is one message and gets exactly one reply message; a
// connection has at most one request outstanding. A connection IS a process of
// the sim kernel: it starts with an empty fd table, fd numbers in requests and
// replies are that process's sim fd numbers (never descriptors of the client),
// and when the connection closes for any reason (close, exit, SIGKILL) the
// process exits: its fds are closed as the kernel closes a dying process's
// fds, so a device in keepalive becomes OWNERLESS.
//
// Message. A request is request_hdr followed by exactly payload_bytes bytes;
// a reply is reply_hdr followed by payload_bytes bytes. Integers are host
// endian (the socket never leaves the host). Open files (eventfds, memfds)
// travel as SCM_RIGHTS, at most max_fds per message.
//
// Requests (request_hdr.op):
//   hello     -> payload hello_reply; SCM_RIGHTS: the physical-memory memfd.
//   open      cmd = open flags, payload = the path (no NUL, <= max_path)
//             -> result = sim fd number.
//   close     fd -> result 0.
//   ioctl     fd, cmd = ioctl number, arg / payload as below
//             -> result = the ioctl's long (>= 0) and payload = the struct
//             bytes back (same length as sent; outputs filled in).
//   pread     fd, arg = offset, cmd = length (<= max_payload)
//             -> result = bytes read, payload = the bytes.
//   pwrite    fd, arg = offset, payload = the bytes -> result = bytes written.
//   kexec     stage-2 kexec of the host (sim::kexec): every other connection
//             is dropped first (processes do not survive a kexec); the
//             requester's connection survives as a tool, with a NEW process
//             (empty fd table) on the new kernel -> result 0.
//   stats     -> JSON text (iommu counters, per-NIC stats, kernel stats).
//   describe  -> kernel::describe() text.
//   Text replies carry the text in a sealed memfd (SCM_RIGHTS, reply flag
//   reply_fd_attached); result = its length. No size limit on the wire.
//
// ioctl arguments (classify() below; the same table on both sides):
//   none         VFIO_GET_API_VERSION, VFIO_GROUP_UNSET_CONTAINER,
//                VFIO_DEVICE_RESET: no payload.
//   integer      VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU: arg = the integer.
//   int_in       VFIO_GROUP_SET_CONTAINER: arg = the container's sim fd number.
//   string       VFIO_GROUP_GET_DEVICE_FD: payload = the name, NUL-terminated
//                (<= max_path).
//   size_first   the keepalive uapi (type ';', nr >= 0xC0) and sim_uapi.h
//                (type 0xAE, nr >= 0xE0): payload = max(size, 4) bytes.
//   argsz_first  the VFIO structs: payload = max(argsz, 4) bytes.
//   Anything else is not carried: the daemon answers -ENOTTY without calling
//   the kernel (the sim kernel implements exactly the table below).
// The daemon never trusts a length field beyond the bytes it received: a
// size/argsz larger than the payload is -EFAULT (user memory ends there), a
// payload longer than max(size, 4) is -EINVAL. The kernel gets a zero-padded
// copy at least as large as the struct it knows.
// Marshalled fields (the client rewrites them, the daemon substitutes its own
// values for the call and writes the wire values back before replying, the
// client restores the caller's values after copying the outputs):
//   VFIO_IOMMU_MAP_DMA.vaddr   an address inside one of the client's
//                              map_phys() mappings becomes the memfd offset
//                              (the sim kernel's convention); any other
//                              value is sent unchanged.
//   VFIO_DEVICE_SET_IRQS data  with VFIO_IRQ_SET_DATA_EVENTFD, each entry >= 0
//                              is an index into the message's SCM_RIGHTS
//                              array (one file per distinct eventfd); -1 stays.
//   KA_SIM_IRQ_BYPASS.irqfd    >= 0: index 0 of the SCM_RIGHTS array.
//                              (device_fd is a sim fd number: unchanged.)
//   (VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD.out_iommufd would be a sim fd number:
//                              unchanged; the sim has no iommufd, never set.)
//   VFIO_KEEPALIVE_LIST_DEVICES entries_uptr: the daemon calls with its own
//                              array of min(nr_entries, max_list_entries)
//                              rows; the reply payload is the struct followed
//                              by out nr_entries rows (on success only).
// The daemon closes every file it received once the call returns (the sim
// kernel dups what it keeps). Every received file referenced by eventfd
// slots must be an eventfd (-EBADF otherwise); an index beyond the files
// received is -EBADF; files nobody references, or on a request that takes
// none, are -EINVAL.
//
// Errors of the protocol itself (reply result, the connection stays up):
//   -EINVAL  message shorter than request_hdr, payload_bytes not the bytes
//            present, malformed payload, unknown op, too many files
//   -EPROTO  wrong magic or version
//   -E2BIG   message longer than request_hdr + max_payload
//   -EFAULT  a size/argsz field beyond the payload
//   -EBADF   a sim fd number this connection does not have
//   -EIO     the kernel is gone (the connection was dropped by a kexec)
// An empty message reads as a hang-up: the daemon closes the connection.
#pragma once

#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "../kernel/sim_uapi.h"

namespace keepalive::simd::wire {

inline constexpr const char* default_socket_path = "/run/keepalive-simd.sock";
inline constexpr const char* socket_env = "KEEPALIVE_SIMD_SOCKET";

inline constexpr std::uint32_t magic = 0x4453414bu;  // "KASD"
inline constexpr std::uint16_t version = 1;
inline constexpr std::size_t max_payload = 64 * 1024;        // request payload, and struct bytes in a reply
inline constexpr std::size_t max_reply_payload = 128 * 1024;  // struct + LIST rows
inline constexpr std::size_t max_fds = 16;
inline constexpr std::size_t max_path = 4096;
inline constexpr std::uint32_t max_list_entries = 2048;
inline constexpr std::size_t max_functions = 32;

enum class op : std::uint16_t {
  hello = 1,
  open = 2,
  close = 3,
  ioctl = 4,
  pread = 5,
  pwrite = 6,
  kexec = 16,
  stats = 17,
  describe = 18,
};

struct request_hdr {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t op;
  std::int32_t fd;
  std::uint32_t payload_bytes;
  std::uint64_t cmd;
  std::uint64_t arg;
};
static_assert(sizeof(request_hdr) == 32 && alignof(request_hdr) == 8);
static_assert(offsetof(request_hdr, fd) == 8 && offsetof(request_hdr, payload_bytes) == 12);
static_assert(offsetof(request_hdr, cmd) == 16 && offsetof(request_hdr, arg) == 24);

inline constexpr std::uint32_t reply_fd_attached = 1u << 0;

struct reply_hdr {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t op;  // the request's op (0 when the request was unreadable)
  std::int64_t result;
  std::uint32_t payload_bytes;
  std::uint32_t flags;  // reply_fd_attached
};
static_assert(sizeof(reply_hdr) == 24 && alignof(reply_hdr) == 8);
static_assert(offsetof(reply_hdr, result) == 8 && offsetof(reply_hdr, payload_bytes) == 16 &&
              offsetof(reply_hdr, flags) == 20);

enum class host_mode : std::uint32_t { keepalive = 0, baseline = 1 };

struct hello_reply {
  std::uint32_t protocol_version;  // wire::version
  std::uint32_t abi_version;       // VFIO_KEEPALIVE_ABI_VERSION of the daemon
  std::uint32_t mode;              // host_mode
  std::uint32_t posted_interrupts; // 0/1: the platform's VT-d CAP.PI
  std::uint64_t phys_bytes;        // size of the memfd
  std::uint64_t guest_start;       // kernel_config.map.guest_start(): guest RAM begins here
  std::uint64_t handover_start;    // the stage-2 image region
  std::uint64_t handover_bytes;
  std::uint32_t nr_functions;
  std::uint32_t functions[max_functions];  // packed BDFs of the PCI functions
  std::uint32_t reserved;
};
static_assert(sizeof(hello_reply) == 48 + 4 * max_functions + 8);
static_assert(offsetof(hello_reply, phys_bytes) == 16 && offsetof(hello_reply, nr_functions) == 48);

// ---------------------------------------------------------------- ioctl marshalling

enum class arg_kind : std::uint8_t { not_carried, none, integer, int_in, string, size_first, argsz_first };

struct arg_class {
  arg_kind kind;
  std::uint32_t struct_size;  // the struct the kernel reads (zero padding up to it); 0 if unknown
};

[[nodiscard]] constexpr arg_class classify(unsigned long cmd) noexcept {
  switch (cmd) {
    case VFIO_GET_API_VERSION:
    case VFIO_GROUP_UNSET_CONTAINER:
    case VFIO_DEVICE_RESET: return {arg_kind::none, 0};
    case VFIO_CHECK_EXTENSION:
    case VFIO_SET_IOMMU: return {arg_kind::integer, 0};
    case VFIO_GROUP_SET_CONTAINER: return {arg_kind::int_in, 0};
    case VFIO_GROUP_GET_DEVICE_FD: return {arg_kind::string, 0};
    case VFIO_IOMMU_MAP_DMA: return {arg_kind::argsz_first, sizeof(vfio_iommu_type1_dma_map)};
    case VFIO_IOMMU_UNMAP_DMA: return {arg_kind::argsz_first, sizeof(vfio_iommu_type1_dma_unmap)};
    case VFIO_GROUP_GET_STATUS: return {arg_kind::argsz_first, sizeof(vfio_group_status)};
    case VFIO_DEVICE_GET_INFO: return {arg_kind::argsz_first, sizeof(vfio_device_info)};
    case VFIO_DEVICE_GET_REGION_INFO: return {arg_kind::argsz_first, sizeof(vfio_region_info)};
    case VFIO_DEVICE_GET_IRQ_INFO: return {arg_kind::argsz_first, sizeof(vfio_irq_info)};
    case VFIO_DEVICE_SET_IRQS: return {arg_kind::argsz_first, sizeof(vfio_irq_set)};
    default: break;
  }
  const unsigned long type = _IOC_TYPE(cmd), nr = _IOC_NR(cmd);
  if (_IOC_DIR(cmd) == _IOC_NONE && _IOC_SIZE(cmd) == 0) {
    if (type == static_cast<unsigned char>(VFIO_KEEPALIVE_TYPE) && nr >= VFIO_KEEPALIVE_BASE) return {arg_kind::size_first, 0};
    if (type == KA_SIM_TYPE && nr >= KA_SIM_BASE) return {arg_kind::size_first, 0};
  }
  return {arg_kind::not_carried, 0};
}

// Byte offsets of the marshalled fields.
inline constexpr std::size_t map_dma_vaddr_offset = offsetof(vfio_iommu_type1_dma_map, vaddr);
inline constexpr std::size_t bypass_irqfd_offset = offsetof(ka_sim_irq_bypass, irqfd);
inline constexpr std::size_t list_nr_entries_offset = offsetof(vfio_keepalive_list, nr_entries);
inline constexpr std::size_t list_uptr_offset = offsetof(vfio_keepalive_list, entries_uptr);
static_assert(map_dma_vaddr_offset == 8 && bypass_irqfd_offset == 24);
static_assert(list_nr_entries_offset == 8 && list_uptr_offset == 16);

template <typename T>
[[nodiscard]] T load(std::span<const std::byte> b, std::size_t off) noexcept {
  T v{};
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <typename T>
void store(std::span<std::byte> b, std::size_t off, const T& v) noexcept {
  std::memcpy(b.data() + off, &v, sizeof v);
}

// The length a struct argument travels with: max(size or argsz, 4).
[[nodiscard]] inline std::size_t struct_wire_bytes(std::uint32_t declared) noexcept {
  return declared < sizeof(std::uint32_t) ? sizeof(std::uint32_t) : declared;
}

// Offsets of VFIO_DEVICE_SET_IRQS eventfd entries inside `s` (the struct bytes
// as declared): entries of data[] that lie within s, none unless DATA_EVENTFD.
[[nodiscard]] inline std::vector<std::size_t> irq_set_fd_slots(std::span<const std::byte> s) {
  std::vector<std::size_t> slots;
  if (s.size() < sizeof(vfio_irq_set)) return slots;
  const auto flags = load<std::uint32_t>(s, offsetof(vfio_irq_set, flags));
  if ((flags & VFIO_IRQ_SET_DATA_TYPE_MASK) != VFIO_IRQ_SET_DATA_EVENTFD) return slots;
  const auto count = load<std::uint32_t>(s, offsetof(vfio_irq_set, count));
  const std::size_t room = (s.size() - sizeof(vfio_irq_set)) / sizeof(std::int32_t);
  const std::size_t n = count < room ? count : room;
  slots.reserve(n);
  for (std::size_t k = 0; k < n; ++k) slots.push_back(sizeof(vfio_irq_set) + k * sizeof(std::int32_t));
  return slots;
}

// ---------------------------------------------------------------- files and messages

class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_{fd} {}
  unique_fd(unique_fd&& o) noexcept : fd_{std::exchange(o.fd_, -1)} {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }
  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// One message: up to three byte parts and files. Returns 0 or an errno.
[[nodiscard]] inline int send_message(int sock, std::span<const std::span<const std::byte>> parts,
                                      std::span<const int> fds) {
  if (fds.size() > max_fds || parts.size() > 3) return EINVAL;
  iovec iov[3]{};
  for (std::size_t i = 0; i < parts.size(); ++i)
    iov[i] = {const_cast<std::byte*>(parts[i].data()), parts[i].size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds)]{};
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = parts.size();
  if (!fds.empty()) {
    m.msg_control = control;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    if (::sendmsg(sock, &m, MSG_NOSIGNAL) >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

struct received {
  std::size_t bytes = 0;     // bytes of the message that fit in the buffer
  bool truncated = false;    // the message was longer than the buffer
  bool fds_truncated = false;  // more files than max_fds came (the rest were closed by the kernel)
  std::vector<unique_fd> fds;
};

// One message into `buf` (its size is the limit). 0 bytes and no error: the
// peer closed. Returns an errno on failure.
[[nodiscard]] inline int receive_message(int sock, std::span<std::byte> buf, received& out) {
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds)]{};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  out = received{};
  out.bytes = static_cast<std::size_t>(n);
  out.truncated = (m.msg_flags & MSG_TRUNC) != 0;
  out.fds_truncated = (m.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t n_fds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < n_fds; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.fds.emplace_back(fd);
    }
  }
  return 0;
}

}  // namespace keepalive::simd::wire
