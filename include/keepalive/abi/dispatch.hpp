// An ioctl dispatch table in the iommufd style: one row per command with the
// struct it takes; the engine applies the uapi rules (ENOTTY, EINVAL, E2BIG,
// flags, reserved) before a handler sees the request, and writes outputs back
// only on success (and on EOVERFLOW, which reports the count needed). The sim kernel serves the uapi through it; fuzzers drive it.
#pragma once

#include <cstdint>
#include <span>

#include "keepalive/abi/copy_struct.hpp"

namespace keepalive::abi {

template <typename Ctx>
struct ioctl_op {
  unsigned long cmd;
  const char* name;
  std::uint32_t min_size;
  std::uint32_t size;
  errc (*call)(Ctx& ctx, std::span<std::byte> user);
};

// A row for command `Cmd` taking struct T, served by `Handler(ctx, T&)`, which
// fills the out_* fields of T and returns errc::ok or the errno to report.
template <typename Ctx, uapi_struct T, errc (*Handler)(Ctx&, T&)>
constexpr ioctl_op<Ctx> make_op(unsigned long cmd, const char* name) {
  return {cmd, name, ioctl_traits<T>::min_size, sizeof(T), [](Ctx& ctx, std::span<std::byte> user) -> errc {
            auto req = decode_request<T>(user);
            if (!req) return req.code();
            const errc e = Handler(ctx, *req);
            if (e == errc::ok || e == errc::overflow) encode_reply(user, *req);
            return e;
          }};
}

template <typename Ctx>
[[nodiscard]] errc dispatch(std::span<const ioctl_op<Ctx>> table, Ctx& ctx, unsigned long cmd,
                            std::span<std::byte> user) {
  for (const auto& op : table)
    if (op.cmd == cmd) return op.call(ctx, user);
  return errc::not_tty;
}

}  // namespace keepalive::abi
