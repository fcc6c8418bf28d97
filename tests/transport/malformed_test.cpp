// The daemon against malformed messages: every one gets an error reply (or,
// for an empty message, the connection is closed), nothing crashes, no file
// leaks, and the daemon keeps serving.
#include <dirent.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "fixture.hpp"
#include "keepalive/abi/uapi.hpp"
#include "sim_uapi.h"
#include "wire.hpp"

using namespace keepalive;
using namespace keepalive::transport_test;
namespace wire = keepalive::simd::wire;

namespace {

std::size_t open_files() {
  std::size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  REQUIRE(d);
  while (auto* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n;
}

// A client that speaks raw bytes.
struct raw_client {
  explicit raw_client(const std::string& path) {
    fd = wire::unique_fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
  }
  struct answer {
    bool closed = false;
    wire::reply_hdr hdr{};
    std::vector<std::byte> payload;
    std::size_t files = 0;
  };
  answer exchange(std::span<const std::byte> msg, std::span<const int> files = {}) {
    const std::span<const std::byte> parts[1] = {msg};
    REQUIRE(wire::send_message(fd.get(), parts, files) == 0);
    return receive();
  }
  answer receive() {
    std::vector<std::byte> buf(sizeof(wire::reply_hdr) + wire::max_reply_payload);
    wire::received m;
    REQUIRE(wire::receive_message(fd.get(), buf, m) == 0);
    answer a;
    a.files = m.fds.size();
    if (m.bytes == 0) {
      a.closed = true;
      return a;
    }
    REQUIRE(m.bytes >= sizeof a.hdr);
    std::memcpy(&a.hdr, buf.data(), sizeof a.hdr);
    CHECK(a.hdr.magic == wire::magic);
    CHECK(a.hdr.payload_bytes == m.bytes - sizeof a.hdr);
    a.payload.assign(buf.begin() + sizeof a.hdr, buf.begin() + static_cast<std::ptrdiff_t>(m.bytes));
    return a;
  }
  // A well-formed request.
  answer request(wire::op o, int target, std::uint64_t cmd, std::uint64_t arg, std::span<const std::byte> payload,
                 std::span<const int> files = {}) {
    std::vector<std::byte> msg(sizeof(wire::request_hdr) + payload.size());
    wire::request_hdr h{wire::magic, wire::version, static_cast<std::uint16_t>(o), target,
                        static_cast<std::uint32_t>(payload.size()), cmd, arg};
    std::memcpy(msg.data(), &h, sizeof h);
    if (!payload.empty()) std::memcpy(msg.data() + sizeof h, payload.data(), payload.size());
    return exchange(msg, files);
  }
  template <typename T>
  answer ioctl(int target, unsigned long cmd, const T& v, std::size_t bytes = sizeof(T), std::span<const int> files = {}) {
    std::vector<std::byte> p(bytes);
    std::memcpy(p.data(), &v, std::min(bytes, sizeof(T)));
    return request(wire::op::ioctl, target, cmd, 0, p, files);
  }
  int open(const char* path) {
    const auto a = request(wire::op::open, -1, O_RDWR, 0, std::as_bytes(std::span{path, std::strlen(path)}));
    REQUIRE(a.hdr.result >= 0);
    return static_cast<int>(a.hdr.result);
  }
  wire::unique_fd fd;
};

template <typename T>
T sized() {
  T v{};
  v.size = sizeof v;
  return v;
}

std::span<const std::byte> bytes_of(const wire::request_hdr& h) { return std::as_bytes(std::span{&h, 1}); }

void still_serving(daemon_fixture& d) {
  auto t = d.connect();
  auto info = t->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  REQUIRE(info);
  CHECK(abi::get_info(*t, *info));
}

}  // namespace

TEST_CASE("malformed envelopes: error replies, the connection stays up") {
  daemon_fixture d;
  const std::size_t files_before = open_files();
  {
    raw_client c{d.socket};
    SUBCASE("shorter than the header") {
      const std::byte junk[10]{};
      auto a = c.exchange(junk);
      CHECK(a.hdr.result == -EINVAL);
      CHECK(a.hdr.op == 0);
    }
    SUBCASE("wrong magic, wrong version") {
      wire::request_hdr h{0x12345678u, wire::version, static_cast<std::uint16_t>(wire::op::hello), -1, 0, 0, 0};
      auto a = c.exchange(bytes_of(h));
      CHECK(a.hdr.result == -EPROTO);
      CHECK(a.hdr.op == 0);
      h.magic = wire::magic;
      h.version = 99;
      CHECK(c.exchange(bytes_of(h)).hdr.result == -EPROTO);
    }
    SUBCASE("payload_bytes lies") {
      std::vector<std::byte> msg(sizeof(wire::request_hdr) + 8);
      wire::request_hdr h{wire::magic, wire::version, static_cast<std::uint16_t>(wire::op::open), -1, 100, 0, 0};
      std::memcpy(msg.data(), &h, sizeof h);
      CHECK(c.exchange(msg).hdr.result == -EINVAL);
      h.payload_bytes = 0;
      std::memcpy(msg.data(), &h, sizeof h);
      CHECK(c.exchange(msg).hdr.result == -EINVAL);
    }
    SUBCASE("unknown op, and payloads where none belongs") {
      wire::request_hdr h{wire::magic, wire::version, 99, -1, 0, 0, 0};
      auto a = c.exchange(bytes_of(h));
      CHECK(a.hdr.result == -EINVAL);
      CHECK(a.hdr.op == 99);
      const std::byte extra[4]{};
      CHECK(c.request(wire::op::hello, -1, 0, 0, extra).hdr.result == -EINVAL);
      CHECK(c.request(wire::op::close, 3, 0, 0, extra).hdr.result == -EINVAL);
      CHECK(c.request(wire::op::stats, -1, 0, 0, extra).hdr.result == -EINVAL);
      CHECK(c.request(wire::op::kexec, -1, 0, 0, extra).hdr.result == -EINVAL);
    }
    SUBCASE("longer than the largest request: E2BIG") {
      std::vector<std::byte> msg(sizeof(wire::request_hdr) + wire::max_payload + 100);
      wire::request_hdr h{wire::magic, wire::version, static_cast<std::uint16_t>(wire::op::pwrite), 3,
                          static_cast<std::uint32_t>(wire::max_payload + 100), 0, 0};
      std::memcpy(msg.data(), &h, sizeof h);
      CHECK(c.exchange(msg).hdr.result == -E2BIG);
    }
    SUBCASE("open: empty path, embedded NUL, too long") {
      CHECK(c.request(wire::op::open, -1, 0, 0, {}).hdr.result == -EINVAL);
      const char nul[] = "/dev/vfio/vfio\0x";
      CHECK(c.request(wire::op::open, -1, 0, 0, std::as_bytes(std::span{nul, sizeof nul - 1})).hdr.result == -EINVAL);
      std::vector<std::byte> longpath(wire::max_path + 1, std::byte{'a'});
      CHECK(c.request(wire::op::open, -1, 0, 0, longpath).hdr.result == -EINVAL);
      const char nodev[] = "/dev/nothing";
      CHECK(c.request(wire::op::open, -1, 0, 0, std::as_bytes(std::span{nodev, sizeof nodev - 1})).hdr.result == -ENOENT);
    }
    SUBCASE("fd numbers that do not exist") {
      CHECK(c.request(wire::op::close, 99, 0, 0, {}).hdr.result == -EBADF);
      auto info = abi::make_request<vfio_keepalive_info>();
      CHECK(c.ioctl(99, VFIO_KEEPALIVE_GET_INFO, info).hdr.result == -EBADF);
      CHECK(c.request(wire::op::pread, 99, 8, 0, {}).hdr.result == -EBADF);
      const std::byte v[8]{};
      CHECK(c.request(wire::op::pwrite, 99, 0, 0, v).hdr.result == -EBADF);
      // VFIO_GROUP_SET_CONTAINER with a container number this connection does not have.
      const int grp = c.open("/dev/vfio/32");
      CHECK(c.request(wire::op::ioctl, grp, VFIO_GROUP_SET_CONTAINER, 77, {}).hdr.result == -EBADF);
      CHECK(c.request(wire::op::ioctl, grp, VFIO_GROUP_SET_CONTAINER, std::uint64_t{1} << 40, {}).hdr.result == -EBADF);
      // KA_SIM_IRQ_BYPASS naming a device fd that does not exist.
      const int vm = c.open("/dev/kvm");
      auto pid = sized<ka_sim_pid>();
      auto created = c.ioctl(vm, KA_SIM_CREATE_PID, pid);
      REQUIRE(created.hdr.result == 0);
      std::memcpy(&pid, created.payload.data(), sizeof pid);
      auto b = sized<ka_sim_irq_bypass>();
      b.device_fd = 42;
      b.pid_id = pid.out_pid_id;
      b.irqfd = -1;
      CHECK(c.ioctl(vm, KA_SIM_IRQ_BYPASS, b).hdr.result == -EBADF);
      // A pread longer than a message can carry.
      CHECK(c.request(wire::op::pread, grp, wire::max_payload + 1, 0, {}).hdr.result == -EINVAL);
    }
    SUBCASE("struct lengths: never trusted beyond the bytes received") {
      const int ctl = c.open(VFIO_KEEPALIVE_CTL_PATH);
      auto info = abi::make_request<vfio_keepalive_info>();
      // size says 4096, 32 bytes came: EFAULT (user memory ends there).
      info.size = 4096;
      CHECK(c.ioctl(ctl, VFIO_KEEPALIVE_GET_INFO, info).hdr.result == -EFAULT);
      // size says 16, 32 bytes came: EINVAL.
      info.size = 16;
      CHECK(c.ioctl(ctl, VFIO_KEEPALIVE_GET_INFO, info).hdr.result == -EINVAL);
      // Not even a size field.
      CHECK(c.request(wire::op::ioctl, ctl, VFIO_KEEPALIVE_GET_INFO, 0, std::span<const std::byte>{}).hdr.result == -EFAULT);
      const std::byte two[2]{};
      CHECK(c.request(wire::op::ioctl, ctl, VFIO_KEEPALIVE_GET_INFO, 0, two).hdr.result == -EFAULT);
      // The exact struct works and its outputs come back.
      info.size = sizeof info;
      auto ok = c.ioctl(ctl, VFIO_KEEPALIVE_GET_INFO, info);
      CHECK(ok.hdr.result == 0);
      REQUIRE(ok.payload.size() == sizeof info);
      vfio_keepalive_info out;
      std::memcpy(&out, ok.payload.data(), sizeof out);
      CHECK(out.out_version == VFIO_KEEPALIVE_ABI_VERSION);
      // VFIO argsz the same way.
      const int cont = c.open("/dev/vfio/vfio");
      vfio_iommu_type1_dma_map m{};
      m.argsz = 1000;
      CHECK(c.ioctl(cont, VFIO_IOMMU_MAP_DMA, m).hdr.result == -EFAULT);
      m.argsz = 8;
      CHECK(c.ioctl(cont, VFIO_IOMMU_MAP_DMA, m).hdr.result == -EINVAL);  // 32 bytes for an argsz of 8
      CHECK(c.ioctl(cont, VFIO_IOMMU_MAP_DMA, m, 8).hdr.result == -EINVAL);  // the kernel: argsz below minsz
      // GET_DEVICE_FD name without its NUL.
      const int grp = c.open("/dev/vfio/32");
      const char name[] = "0000:00:04.0";
      CHECK(c.request(wire::op::ioctl, grp, VFIO_GROUP_GET_DEVICE_FD, 0, std::as_bytes(std::span{name, sizeof name - 1}))
                .hdr.result == -EINVAL);
      // Commands the transport does not carry.
      CHECK(c.request(wire::op::ioctl, cont, 0xdeadbeef, 0, {}).hdr.result == -ENOTTY);
      // LIST with a capacity far beyond what the wire carries: clamped, not allocated.
      auto list = abi::make_request<vfio_keepalive_list>();
      list.nr_entries = 0xffffffffu;
      list.entries_uptr = 0x1000;
      auto l = c.ioctl(ctl, VFIO_KEEPALIVE_LIST_DEVICES, list);
      CHECK(l.hdr.result == 0);
      REQUIRE(l.payload.size() == sizeof list);  // no devices in keepalive: no rows
      std::memcpy(&list, l.payload.data(), sizeof list);
      CHECK(list.nr_entries == 0);
      CHECK(list.entries_uptr == 0x1000);  // the client's value comes back
    }
    SUBCASE("files: too many, unreferenced, wrong kind, on requests that take none") {
      std::vector<int> efds;
      for (std::size_t i = 0; i < wire::max_fds + 1; ++i) efds.push_back(::eventfd(0, EFD_CLOEXEC));
      auto st = abi::make_request<vfio_keepalive_status>();
      // Over the limit: the kernel drops the rest (MSG_CTRUNC); EINVAL.
      {
        std::vector<std::byte> msg(sizeof(wire::request_hdr));
        wire::request_hdr h{wire::magic, wire::version, static_cast<std::uint16_t>(wire::op::hello), -1, 0, 0, 0};
        std::memcpy(msg.data(), &h, sizeof h);
        // send_message refuses more than max_fds itself: go around it.
        iovec iov{msg.data(), msg.size()};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * (wire::max_fds + 1))]{};
        msghdr mh{};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = control;
        mh.msg_controllen = sizeof control;
        cmsghdr* cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * efds.size());
        std::memcpy(CMSG_DATA(cm), efds.data(), sizeof(int) * efds.size());
        REQUIRE(::sendmsg(c.fd.get(), &mh, MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size()));
        auto a = c.receive();
        CHECK(a.hdr.result == -EINVAL);
        CHECK(a.files == 0);  // the hello was refused: no memfd
      }
      // Files on a request that takes none.
      CHECK(c.request(wire::op::hello, -1, 0, 0, {}, std::span{efds.data(), 1}).hdr.result == -EINVAL);
      const char path[] = "/dev/kvm";
      CHECK(c.request(wire::op::open, -1, 0, 0, std::as_bytes(std::span{path, sizeof path - 1}), std::span{efds.data(), 2})
                .hdr.result == -EINVAL);
      const int ctl = c.open(VFIO_KEEPALIVE_CTL_PATH);
      CHECK(c.ioctl(ctl, VFIO_DEVICE_KEEPALIVE_GET_STATUS, st, sizeof st, std::span{efds.data(), 1}).hdr.result == -EINVAL);

      // SET_IRQS on a real device: index beyond the files, unreferenced file, not an eventfd.
      const int cont = c.open("/dev/vfio/vfio");
      const int grp = c.open("/dev/vfio/32");
      REQUIRE(c.request(wire::op::ioctl, grp, VFIO_GROUP_SET_CONTAINER, static_cast<std::uint64_t>(cont), {}).hdr.result == 0);
      REQUIRE(c.request(wire::op::ioctl, cont, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU, {}).hdr.result == 0);
      const char name[] = "0000:00:04.0";
      const auto dev_reply = c.request(wire::op::ioctl, grp, VFIO_GROUP_GET_DEVICE_FD, 0, std::as_bytes(std::span{name, sizeof name}));
      REQUIRE(dev_reply.hdr.result >= 0);
      const int dev = static_cast<int>(dev_reply.hdr.result);
      alignas(8) std::byte buf[sizeof(vfio_irq_set) + 2 * sizeof(std::int32_t)]{};
      vfio_irq_set s{};
      s.argsz = sizeof buf;
      s.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
      s.index = VFIO_PCI_MSIX_IRQ_INDEX;
      s.count = 2;
      std::memcpy(buf, &s, sizeof s);
      auto with = [&](std::int32_t a0, std::int32_t a1) {
        std::memcpy(buf + sizeof s, &a0, 4);
        std::memcpy(buf + sizeof s + 4, &a1, 4);
        return std::span<const std::byte>{buf, sizeof buf};
      };
      CHECK(c.request(wire::op::ioctl, dev, VFIO_DEVICE_SET_IRQS, 0, with(0, 5), std::span{efds.data(), 1}).hdr.result == -EBADF);
      CHECK(c.request(wire::op::ioctl, dev, VFIO_DEVICE_SET_IRQS, 0, with(0, -1), std::span{efds.data(), 2}).hdr.result == -EINVAL);
      CHECK(c.request(wire::op::ioctl, dev, VFIO_DEVICE_SET_IRQS, 0, with(0, 1), {}).hdr.result == -EBADF);
      int pipefd[2];
      REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
      CHECK(c.request(wire::op::ioctl, dev, VFIO_DEVICE_SET_IRQS, 0, with(0, -1), std::span{pipefd, 1}).hdr.result == -EBADF);
      // A count pointing past the bytes sent: no slot is read beyond them; the kernel checks argsz.
      vfio_irq_set lying = s;
      lying.argsz = sizeof lying;
      lying.count = 1000;
      CHECK(c.ioctl(dev, VFIO_DEVICE_SET_IRQS, lying).hdr.result == -EINVAL);
      lying.count = 2;
      CHECK(c.ioctl(dev, VFIO_DEVICE_SET_IRQS, lying).hdr.result == -EINVAL);  // argsz too small for 2 entries
      // And done right: two vectors, one file; the wire values come back.
      auto good = c.request(wire::op::ioctl, dev, VFIO_DEVICE_SET_IRQS, 0, with(0, 0), std::span{efds.data(), 1});
      CHECK(good.hdr.result == 0);
      REQUIRE(good.payload.size() == sizeof buf);
      CHECK(std::memcmp(good.payload.data(), buf, sizeof buf) == 0);
      // IRQ_BYPASS: the index must be 0 and come with exactly its file.
      const int vm = c.open("/dev/kvm");
      auto pid = sized<ka_sim_pid>();
      auto created = c.ioctl(vm, KA_SIM_CREATE_PID, pid);
      REQUIRE(created.hdr.result == 0);
      std::memcpy(&pid, created.payload.data(), sizeof pid);
      auto b = sized<ka_sim_irq_bypass>();
      b.device_fd = dev;
      b.pid_id = pid.out_pid_id;
      b.guest_vector = 0x41;
      b.irqfd = 1;
      CHECK(c.ioctl(vm, KA_SIM_IRQ_BYPASS, b, sizeof b, std::span{efds.data(), 1}).hdr.result == -EBADF);
      b.irqfd = 0;
      CHECK(c.ioctl(vm, KA_SIM_IRQ_BYPASS, b, sizeof b, std::span{pipefd, 1}).hdr.result == -EBADF);
      auto ok = c.ioctl(vm, KA_SIM_IRQ_BYPASS, b, sizeof b, std::span{efds.data(), 1});
      CHECK(ok.hdr.result == 0);
      REQUIRE(ok.payload.size() == sizeof b);
      ka_sim_irq_bypass back;
      std::memcpy(&back, ok.payload.data(), sizeof back);
      CHECK(back.irqfd == 0);  // the wire value, not the daemon's file
      ::close(pipefd[0]);
      ::close(pipefd[1]);
      for (int e : efds) ::close(e);
    }
    still_serving(d);
  }
  d.wait_for_connections(0);
  // Every file the daemon received was closed (the kernel dup'ed the ones it keeps and
  // released them when the connection's process exited).
  CHECK(open_files() == files_before);
  still_serving(d);
}

TEST_CASE("an empty message closes the connection, and garbage then a hang-up does not disturb the daemon") {
  daemon_fixture d;
  {
    raw_client c{d.socket};
    auto a = c.exchange({});
    CHECK(a.closed);
  }
  {
    raw_client c{d.socket};
    std::vector<std::byte> junk(3000, std::byte{0x5a});
    const std::span<const std::byte> parts[1] = {junk};
    REQUIRE(wire::send_message(c.fd.get(), parts, {}) == 0);
  }  // closed without reading the reply
  still_serving(d);  // served after it: the hung-up connection was accepted before
  d.wait_for_connections(0);
  still_serving(d);
}

TEST_CASE("the client refuses what it cannot carry") {
  daemon_fixture d;
  auto t = d.connect();
  auto ctl = t->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  REQUIRE(ctl);
  std::vector<std::byte> big(wire::max_payload + 8);
  const std::uint32_t size = static_cast<std::uint32_t>(big.size());
  std::memcpy(big.data(), &size, sizeof size);
  CHECK(t->ioctl(*ctl, VFIO_KEEPALIVE_GET_INFO, big.data()) == -E2BIG);
  CHECK(t->ioctl(*ctl, VFIO_KEEPALIVE_GET_INFO, nullptr) == -EFAULT);
  std::string longname(wire::max_path + 10, 'x');
  CHECK(t->ioctl(*ctl, VFIO_GROUP_GET_DEVICE_FD, longname.data()) == -EINVAL);
  CHECK(t->open(std::string(wire::max_path + 1, 'a'), 0).code() == errc::invalid);
  CHECK(t->close(77) == errc::bad_fd);
  // An eventfd number that is not open in this process cannot travel: EBADF, as the kernel says.
  alignas(8) std::byte buf[sizeof(vfio_irq_set) + sizeof(std::int32_t)]{};
  vfio_irq_set s{};
  s.argsz = sizeof buf;
  s.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  s.index = VFIO_PCI_MSIX_IRQ_INDEX;
  s.count = 1;
  std::memcpy(buf, &s, sizeof s);
  const std::int32_t not_open = 9999;
  std::memcpy(buf + sizeof s, &not_open, sizeof not_open);
  CHECK(t->ioctl(*ctl, VFIO_DEVICE_SET_IRQS, buf) == -EBADF);
  CHECK(abi::get_info(*t, *ctl));
}
