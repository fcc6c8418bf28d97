// The caller side: typed ops build well-formed requests and decode replies.
// A fake kernel serves them through the same dispatch engine.
#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include <keepalive/abi/dispatch.hpp>
#include <keepalive/abi/ops.hpp>

using namespace keepalive;
using namespace keepalive::abi;

namespace {
struct fake_kernel {
  token expected;
  std::uint32_t state = VFIO_KEEPALIVE_STATE_RUNNING;
  std::vector<vfio_keepalive_device_entry> devices;
  int list_calls = 0;
  int parked_iommufd = -1;  // the context fd GET_IOMMUFD hands out; -1: not parked
  token iommufd_token;      // the token GET_IOMMUFD was given
};
errc do_enter(fake_kernel& k, vfio_keepalive_enter& r) {
  if (k.state != VFIO_KEEPALIVE_STATE_RUNNING) return errc::busy;
  token::bytes b{};
  std::memcpy(b.data(), r.token, b.size());
  k.expected = token{b};
  k.state = VFIO_KEEPALIVE_STATE_KEPT_ALIVE;
  r.out_irq_mode = VFIO_KEEPALIVE_IRQ_POSTED;
  r.out_nr_vectors = 3;
  return errc::ok;
}
errc do_leave(fake_kernel& k, vfio_keepalive_leave& r) {
  if (std::memcmp(k.expected.raw().data(), r.token, 16) != 0) return errc::access_denied;
  k.state = VFIO_KEEPALIVE_STATE_RUNNING;
  return errc::ok;
}
errc do_list(fake_kernel& k, vfio_keepalive_list& r) {
  ++k.list_calls;
  if (r.nr_entries < k.devices.size()) {
    r.nr_entries = static_cast<__u32>(k.devices.size());
    return errc::overflow;
  }
  std::memcpy(reinterpret_cast<void*>(static_cast<std::uintptr_t>(r.entries_uptr)), k.devices.data(),
              k.devices.size() * sizeof(vfio_keepalive_device_entry));
  r.nr_entries = static_cast<__u32>(k.devices.size());
  return errc::ok;
}
errc do_get_iommufd(fake_kernel& k, vfio_keepalive_iommufd& r) {
  token::bytes b{};
  std::memcpy(b.data(), r.token, b.size());
  k.iommufd_token = token{b};
  if (k.parked_iommufd < 0) return errc::not_found;
  if (k.iommufd_token != k.expected) return errc::access_denied;
  r.out_iommufd = k.parked_iommufd;
  return errc::ok;
}
constexpr std::array<ioctl_op<fake_kernel>, 4> table{
    make_op<fake_kernel, vfio_keepalive_enter, do_enter>(VFIO_DEVICE_KEEPALIVE_ENTER, "enter"),
    make_op<fake_kernel, vfio_keepalive_leave, do_leave>(VFIO_DEVICE_KEEPALIVE_LEAVE, "leave"),
    make_op<fake_kernel, vfio_keepalive_iommufd, do_get_iommufd>(VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, "get_iommufd"),
    make_op<fake_kernel, vfio_keepalive_list, do_list>(VFIO_KEEPALIVE_LIST_DEVICES, "list"),
};

class fake_syscalls final : public syscalls {
 public:
  explicit fake_syscalls(fake_kernel& k) : k_{k} {}
  long ioctl(int, unsigned long cmd, void* arg) override {
    std::uint32_t size = 0;
    std::memcpy(&size, arg, 4);
    std::span<std::byte> user{static_cast<std::byte*>(arg), size};
    return -static_cast<long>(dispatch(std::span<const ioctl_op<fake_kernel>>{table}, k_, cmd, user));
  }
  result<int> open(std::string_view, int) override { return 3; }
  errc close(int) override { return errc::ok; }
  result<std::size_t> pread(int, std::span<std::byte>, std::uint64_t) override { return {errc::io, "unused"}; }
  result<std::size_t> pwrite(int, std::span<const std::byte>, std::uint64_t) override { return {errc::io, "unused"}; }

 private:
  fake_kernel& k_;
};
}  // namespace

TEST_CASE("enter/leave carry the token and decode the reply") {
  fake_kernel k;
  fake_syscalls sys{k};
  const auto t = *token::parse("00112233-4455-6677-8899-aabbccddeeff");
  auto r = keepalive_enter(sys, 3, t);
  REQUIRE(r);
  CHECK(r->mode == irq_mode::posted);
  CHECK(r->nr_vectors == 3);
  CHECK(k.expected == t);
  auto again = keepalive_enter(sys, 3, t);
  CHECK(again.code() == errc::busy);
  CHECK(again.err().message() == "EBUSY (not a legal transition from the current state): VFIO_DEVICE_KEEPALIVE_ENTER");
  CHECK(keepalive_leave(sys, 3, *token::parse("00112233-4455-6677-8899-aabbccddeef0")).code() ==
        errc::access_denied);
  CHECK(keepalive_leave(sys, 3, t));
  CHECK(k.state == VFIO_KEEPALIVE_STATE_RUNNING);
}

namespace {
// Answers every ioctl with `rc`, writing `out_fd` into out_iommufd when set;
// keeps a copy of the last request.
class scripted_syscalls final : public syscalls {
 public:
  long rc = 0;
  std::optional<int> out_fd;
  unsigned long last_cmd = 0;
  vfio_keepalive_iommufd last{};
  long ioctl(int, unsigned long cmd, void* arg) override {
    last_cmd = cmd;
    std::memcpy(&last, arg, sizeof last);
    if (out_fd) std::memcpy(static_cast<std::byte*>(arg) + offsetof(vfio_keepalive_iommufd, out_iommufd), &*out_fd, 4);
    return rc;
  }
  result<int> open(std::string_view, int) override { return 3; }
  errc close(int) override { return errc::ok; }
  result<std::size_t> pread(int, std::span<std::byte>, std::uint64_t) override { return {errc::io, "unused"}; }
  result<std::size_t> pwrite(int, std::span<const std::byte>, std::uint64_t) override { return {errc::io, "unused"}; }
};
}  // namespace

TEST_CASE("keepalive_get_iommufd returns the context fd the kernel hands out") {
  fake_kernel k;
  fake_syscalls sys{k};
  const auto t = *token::parse("00112233-4455-6677-8899-aabbccddeeff");
  REQUIRE(keepalive_enter(sys, 3, t));
  k.parked_iommufd = 17;
  auto fd = keepalive_get_iommufd(sys, 3, t);
  REQUIRE(fd);
  CHECK(*fd == 17);
  CHECK(k.iommufd_token == t);
  k.parked_iommufd = 0;  // fd 0 is a valid descriptor
  CHECK(keepalive_get_iommufd(sys, 3, t).value() == 0);
  const auto other = *token::parse("00112233-4455-6677-8899-aabbccddeef0");
  auto denied = keepalive_get_iommufd(sys, 3, other);
  CHECK(denied.code() == errc::access_denied);
  CHECK(k.iommufd_token == other);
  k.parked_iommufd = -1;
  auto none = keepalive_get_iommufd(sys, 3, t);
  CHECK(none.code() == errc::not_found);
  CHECK(none.err().message() == "ENOENT (no such device or not in keepalive): VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD");
}

TEST_CASE("keepalive_get_iommufd: the request as the uapi defines it, errnos with the ioctl name") {
  scripted_syscalls sys;
  const auto t = *token::parse("5a0c7e1f-3b2d-4c6e-9f80-a1b2c3d4e5f6");
  sys.out_fd = 42;
  auto fd = keepalive_get_iommufd(sys, 9, t);
  REQUIRE(fd);
  CHECK(*fd == 42);
  CHECK(sys.last_cmd == VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD);
  CHECK(sys.last.size == sizeof(vfio_keepalive_iommufd));
  CHECK(sys.last.flags == 0);
  CHECK(sys.last.__reserved == 0);
  CHECK(std::memcmp(sys.last.token, t.raw().data(), 16) == 0);

  sys.out_fd.reset();
  for (auto [e, code] : {std::pair{EBUSY, errc::busy}, std::pair{ENOENT, errc::not_found},
                         std::pair{EACCES, errc::access_denied}, std::pair{EINVAL, errc::invalid},
                         std::pair{E2BIG, errc::too_big}, std::pair{ENOTTY, errc::not_tty}}) {
    CAPTURE(e);
    sys.rc = -e;
    auto r = keepalive_get_iommufd(sys, 9, t);
    CHECK(r.code() == code);
    CHECK(r.err().message().ends_with(": VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD"));
  }
  sys.rc = -EMFILE;
  auto emfile = keepalive_get_iommufd(sys, 9, t);
  CHECK(emfile.code() == errc::too_many_files);
  CHECK(emfile.err().message().ends_with(": VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD"));
  // Success that leaves out_iommufd unwritten is not an fd.
  sys.rc = 0;
  auto unwritten = keepalive_get_iommufd(sys, 9, t);
  CHECK(unwritten.code() == errc::io);
}

TEST_CASE("list_devices grows its buffer on EOVERFLOW") {
  fake_kernel k;
  for (std::uint32_t i = 0; i < 20; ++i)
    k.devices.push_back({bdf{0, 1, static_cast<std::uint8_t>(i), 0}.packed(), VFIO_KEEPALIVE_STATE_OWNERLESS,
                         VFIO_KEEPALIVE_IRQ_POSTED, i, 0, 100 + i});
  fake_syscalls sys{k};
  auto r = list_devices(sys, 3);
  REQUIRE(r);
  REQUIRE(r->size() == 20);
  CHECK(k.list_calls == 2);
  CHECK((*r)[19].device == bdf{0, 1, 19, 0});
  CHECK((*r)[19].state == device_state::ownerless);
  CHECK((*r)[19].domain.value() == 119);
}

TEST_CASE("reclaim name follows VFIO's vf_token convention") {
  const auto t = *token::parse("00112233-4455-6677-8899-aabbccddeeff");
  CHECK(reclaim_name(bdf{0, 0, 4, 0}, t) == "0000:00:04.0 vf_token=00112233-4455-6677-8899-aabbccddeeff");
}
