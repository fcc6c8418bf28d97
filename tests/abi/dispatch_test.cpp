// The uapi validation rules, proven on a dispatch table whose handlers echo a
// marker into the outputs. The same rules are then checked against the sim
// kernel and the real kernel by the conformance suite.
#include <doctest/doctest.h>

#include <array>
#include <cstring>
#include <string_view>
#include <vector>

#include <keepalive/abi/dispatch.hpp>

using namespace keepalive;
using namespace keepalive::abi;

namespace {
struct echo_ctx {
  int calls = 0;
  unsigned long last_cmd = 0;
};
template <typename T>
errc echo(echo_ctx& c, T& v) {
  ++c.calls;
  c.last_cmd = ioctl_traits<T>::cmd;
  // Mark the last byte of the struct so the reply's length can be observed.
  reinterpret_cast<unsigned char*>(&v)[sizeof(T) - 1] = 0xA5;
  return errc::ok;
}
constexpr std::array<ioctl_op<echo_ctx>, 9> table{
    make_op<echo_ctx, vfio_keepalive_enter, echo<vfio_keepalive_enter>>(VFIO_DEVICE_KEEPALIVE_ENTER, "enter"),
    make_op<echo_ctx, vfio_keepalive_leave, echo<vfio_keepalive_leave>>(VFIO_DEVICE_KEEPALIVE_LEAVE, "leave"),
    make_op<echo_ctx, vfio_keepalive_status, echo<vfio_keepalive_status>>(VFIO_DEVICE_KEEPALIVE_GET_STATUS, "status"),
    make_op<echo_ctx, vfio_keepalive_iommufd, echo<vfio_keepalive_iommufd>>(VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, "iommufd"),
    make_op<echo_ctx, vfio_keepalive_info, echo<vfio_keepalive_info>>(VFIO_KEEPALIVE_GET_INFO, "info"),
    make_op<echo_ctx, vfio_keepalive_list, echo<vfio_keepalive_list>>(VFIO_KEEPALIVE_LIST_DEVICES, "list"),
    make_op<echo_ctx, vfio_keepalive_stage2, echo<vfio_keepalive_stage2>>(VFIO_KEEPALIVE_STAGE2_PREPARE, "prepare"),
    make_op<echo_ctx, vfio_keepalive_event, echo<vfio_keepalive_event>>(VFIO_KEEPALIVE_READ_EVENT, "event"),
    make_op<echo_ctx, vfio_keepalive_reset, echo<vfio_keepalive_reset>>(VFIO_KEEPALIVE_RESET_DEVICE, "reset"),
};

errc call(echo_ctx& c, unsigned long cmd, std::vector<std::byte>& buf) {
  return dispatch(std::span<const ioctl_op<echo_ctx>>{table}, c, cmd, std::span<std::byte>{buf});
}
std::vector<std::byte> request(std::uint32_t size, std::size_t buffer_bytes) {
  std::vector<std::byte> b(buffer_bytes, std::byte{0});
  std::memcpy(b.data(), &size, sizeof size);
  return b;
}
}  // namespace

TEST_CASE("length rules for every ioctl (TEST_LENGTH)") {
  for (const auto& op : table) {
    CAPTURE(op.name);
    echo_ctx c;
    // size below the minimum
    auto small = request(op.min_size - 1, op.size + 16);
    CHECK(call(c, op.cmd, small) == errc::invalid);
    // sizeof + 1 with a non-zero tail
    auto big = request(op.size + 1, op.size + 16);
    big[op.size] = std::byte{1};
    CHECK(call(c, op.cmd, big) == errc::too_big);
    // a longer struct whose tail is zero is served, and the reply stops at sizeof
    auto longer = request(op.size + 8, op.size + 16);
    CHECK(call(c, op.cmd, longer) == errc::ok);
    CHECK(longer[op.size - 1] == std::byte{0xA5});
    CHECK(longer[op.size] == std::byte{0});
    // exactly sizeof
    auto exact = request(op.size, op.size + 16);
    CHECK(call(c, op.cmd, exact) == errc::ok);
    CHECK(exact[op.size - 1] == std::byte{0xA5});
    CHECK(c.calls == 2);
    CHECK(c.last_cmd == op.cmd);
    // a size field larger than the buffer itself
    auto lying = request(op.size + 64, op.size);
    CHECK(call(c, op.cmd, lying) == errc::fault);
    // unknown flags
    auto flagged = request(op.size, op.size);
    const std::uint32_t unknown = 1u << 31;
    std::memcpy(flagged.data() + 4, &unknown, 4);
    CHECK(call(c, op.cmd, flagged) == errc::invalid);
    CHECK(c.calls == 2);
  }
}

TEST_CASE("v1 structs: every field is mandatory (min_size == sizeof)") {
  // When a field is appended in v2, min_size stays at the v1 end and this test
  // is where the old-caller path gets its own checks.
  for (const auto& op : table) {
    CAPTURE(op.name);
    CHECK(op.min_size == op.size);
  }
}

TEST_CASE("unknown ioctl is ENOTTY") {
  echo_ctx c;
  auto b = request(64, 64);
  CHECK(call(c, 0xdeadUL, b) == errc::not_tty);
  CHECK(c.calls == 0);
}

TEST_CASE("reserved fields must be zero") {
  echo_ctx c;
  auto enter = make_request<vfio_keepalive_enter>();
  enter.token[0] = 1;
  std::vector<std::byte> b(sizeof enter);
  enter.__reserved = 1;
  std::memcpy(b.data(), &enter, sizeof enter);
  CHECK(call(c, VFIO_DEVICE_KEEPALIVE_ENTER, b) == errc::invalid);
  enter.__reserved = 0;
  enter.__reserved2 = 7;
  std::memcpy(b.data(), &enter, sizeof enter);
  CHECK(call(c, VFIO_DEVICE_KEEPALIVE_ENTER, b) == errc::invalid);
  enter.__reserved2 = 0;
  enter.flags = VFIO_KEEPALIVE_ENTER_ALLOW_MASKING;  // a known flag passes
  std::memcpy(b.data(), &enter, sizeof enter);
  CHECK(call(c, VFIO_DEVICE_KEEPALIVE_ENTER, b) == errc::ok);

  auto iommufd = make_request<vfio_keepalive_iommufd>();
  iommufd.token[0] = 1;
  iommufd.__reserved = 1u << 31;
  std::vector<std::byte> bf(sizeof iommufd);
  std::memcpy(bf.data(), &iommufd, sizeof iommufd);
  CHECK(call(c, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, bf) == errc::invalid);
  iommufd.__reserved = 0;
  iommufd.out_iommufd = -1;  // an input value in an out_* field is not refused
  std::memcpy(bf.data(), &iommufd, sizeof iommufd);
  CHECK(call(c, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, bf) == errc::ok);

  auto info = make_request<vfio_keepalive_info>();
  info.__reserved = 0x100;
  std::vector<std::byte> bi(sizeof info);
  std::memcpy(bi.data(), &info, sizeof info);
  CHECK(call(c, VFIO_KEEPALIVE_GET_INFO, bi) == errc::invalid);
}

TEST_CASE("GET_IOMMUFD traits follow the uapi: 32 bytes, every field mandatory, no flags") {
  using tr = ioctl_traits<vfio_keepalive_iommufd>;
  CHECK(tr::cmd == _IO(';', 0xC0 + 3));
  CHECK(tr::min_size == 32);
  CHECK(tr::known_flags == 0);
  CHECK(std::string_view{tr::name} == "VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD");
  auto v = make_request<vfio_keepalive_iommufd>();
  CHECK(v.size == 32);
  CHECK(tr::reserved_zero(v));
  v.__reserved = 1;
  CHECK_FALSE(tr::reserved_zero(v));
}

TEST_CASE("copy_struct zero-extends a short user struct") {
  std::array<std::byte, 8> kernel{};
  kernel.fill(std::byte{0xff});
  const std::array<std::byte, 4> user{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
  CHECK(copy_struct(kernel, user) == errc::ok);
  CHECK(kernel[3] == std::byte{4});
  CHECK(kernel[4] == std::byte{0});
  CHECK(kernel[7] == std::byte{0});
}
