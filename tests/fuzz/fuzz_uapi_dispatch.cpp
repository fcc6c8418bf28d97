// The abi dispatch engine (abi/dispatch.hpp) over a table of every keepalive
// struct (and the sim host's two), with an arbitrary command and user buffer.
// An oracle written here from the uapi text alone ("General ioctl format")
// says what the engine must answer; any disagreement traps: a request accepted
// that breaks a rule, a valid one refused, a handler seeing other bytes than
// the caller's, a reply written on failure or past min(size, sizeof). ASan
// catches any access past the buffer (an exact-size heap copy).
//
// Input: [0] command selector (< 2 x rows: a row's command; else [1..5) is a
// raw command), [1] the errc the handler returns, [2] the byte pattern it
// writes into the reply, then the user buffer.
#include <linux/vfio_keepalive.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <vector>

#include "sim_uapi_traits.hpp"
#include "keepalive/abi/dispatch.hpp"
#include "sim_uapi.h"

namespace {
using namespace keepalive;

struct fuzz_ctx {
  errc reply = errc::ok;
  std::uint8_t pattern = 0;
  bool called = false;
  std::vector<std::byte> seen;     // the request the handler received
  std::vector<std::byte> written;  // the struct after the handler filled it
};

template <typename T>
errc handle(fuzz_ctx& c, T& v) {
  c.called = true;
  auto* p = reinterpret_cast<std::byte*>(&v);
  c.seen.assign(p, p + sizeof(T));
  for (std::size_t i = 8; i < sizeof(T); ++i) p[i] = static_cast<std::byte>(c.pattern + i);
  c.written.assign(p, p + sizeof(T));
  return c.reply;
}

template <typename T>
constexpr abi::ioctl_op<fuzz_ctx> row(unsigned long cmd, const char* name) {
  return abi::make_op<fuzz_ctx, T, &handle<T>>(cmd, name);
}

constexpr std::array<abi::ioctl_op<fuzz_ctx>, 12> table{
    row<vfio_keepalive_enter>(VFIO_DEVICE_KEEPALIVE_ENTER, "ENTER"),
    row<vfio_keepalive_leave>(VFIO_DEVICE_KEEPALIVE_LEAVE, "LEAVE"),
    row<vfio_keepalive_status>(VFIO_DEVICE_KEEPALIVE_GET_STATUS, "GET_STATUS"),
    row<vfio_keepalive_iommufd>(VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, "GET_IOMMUFD"),
    row<vfio_keepalive_info>(VFIO_KEEPALIVE_GET_INFO, "GET_INFO"),
    row<vfio_keepalive_list>(VFIO_KEEPALIVE_LIST_DEVICES, "LIST_DEVICES"),
    row<vfio_keepalive_stage2>(VFIO_KEEPALIVE_STAGE2_PREPARE, "STAGE2_PREPARE"),
    row<vfio_keepalive_stage2>(VFIO_KEEPALIVE_STAGE2_ABORT, "STAGE2_ABORT"),
    row<vfio_keepalive_event>(VFIO_KEEPALIVE_READ_EVENT, "READ_EVENT"),
    row<vfio_keepalive_reset>(VFIO_KEEPALIVE_RESET_DEVICE, "RESET_DEVICE"),
    row<ka_sim_pid>(KA_SIM_CREATE_PID, "KA_SIM_CREATE_PID"),
    row<ka_sim_irq_bypass>(KA_SIM_IRQ_BYPASS, "KA_SIM_IRQ_BYPASS"),
};

// The oracle's own reading of the uapi: per command, the struct size, the
// smallest size accepted (v1: every field is mandatory, so offsetofend of the
// last field), the flags defined, and where the __reserved fields are.
struct field {
  std::size_t offset, bytes;
};
struct rule {
  unsigned long cmd;
  std::size_t size, min_size;
  std::uint32_t flags;
  std::array<field, 2> reserved;
  std::size_t nr_reserved;
};
#define FIELD(T, m) field{offsetof(T, m), sizeof(T::m)}
#define END(T, m) (offsetof(T, m) + sizeof(T::m))
const std::array<rule, 12> rules{{
    {VFIO_DEVICE_KEEPALIVE_ENTER, sizeof(vfio_keepalive_enter), END(vfio_keepalive_enter, __reserved2),
     VFIO_KEEPALIVE_ENTER_ALLOW_MASKING, {FIELD(vfio_keepalive_enter, __reserved), FIELD(vfio_keepalive_enter, __reserved2)}, 2},
    {VFIO_DEVICE_KEEPALIVE_LEAVE, sizeof(vfio_keepalive_leave), END(vfio_keepalive_leave, token), 0, {}, 0},
    {VFIO_DEVICE_KEEPALIVE_GET_STATUS, sizeof(vfio_keepalive_status), END(vfio_keepalive_status, out_dma_faults), 0,
     {FIELD(vfio_keepalive_status, __reserved)}, 1},
    {VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD, sizeof(vfio_keepalive_iommufd), END(vfio_keepalive_iommufd, __reserved), 0,
     {FIELD(vfio_keepalive_iommufd, __reserved)}, 1},
    {VFIO_KEEPALIVE_GET_INFO, sizeof(vfio_keepalive_info), END(vfio_keepalive_info, out_generation), 0,
     {FIELD(vfio_keepalive_info, __reserved)}, 1},
    {VFIO_KEEPALIVE_LIST_DEVICES, sizeof(vfio_keepalive_list), END(vfio_keepalive_list, entries_uptr), 0,
     {FIELD(vfio_keepalive_list, __reserved)}, 1},
    {VFIO_KEEPALIVE_STAGE2_PREPARE, sizeof(vfio_keepalive_stage2), END(vfio_keepalive_stage2, out_image_bytes), 0,
     {FIELD(vfio_keepalive_stage2, __reserved)}, 1},
    {VFIO_KEEPALIVE_STAGE2_ABORT, sizeof(vfio_keepalive_stage2), END(vfio_keepalive_stage2, out_image_bytes), 0,
     {FIELD(vfio_keepalive_stage2, __reserved)}, 1},
    {VFIO_KEEPALIVE_READ_EVENT, sizeof(vfio_keepalive_event), END(vfio_keepalive_event, out_data), 0,
     {FIELD(vfio_keepalive_event, __reserved)}, 1},
    {VFIO_KEEPALIVE_RESET_DEVICE, sizeof(vfio_keepalive_reset), END(vfio_keepalive_reset, __reserved), 0,
     {FIELD(vfio_keepalive_reset, __reserved)}, 1},
    {KA_SIM_CREATE_PID, sizeof(ka_sim_pid), END(ka_sim_pid, out_pid_hpa), 0, {}, 0},
    {KA_SIM_IRQ_BYPASS, sizeof(ka_sim_irq_bypass), END(ka_sim_irq_bypass, __reserved), KA_SIM_BYPASS_DISCONNECT,
     {FIELD(ka_sim_irq_bypass, __reserved)}, 1},
}};
#undef FIELD
#undef END

constexpr std::array<errc, 6> handler_replies{errc::ok, errc::overflow, errc::busy, errc::access_denied,
                                              errc::no_memory, errc::invalid};

[[noreturn]] void finding(unsigned long cmd, const char* what, errc got, errc want) {
  std::fprintf(stderr, "fuzz_uapi_dispatch: cmd %#lx: %s (engine %d, oracle %d)\n", cmd, what, static_cast<int>(got),
               static_cast<int>(want));
  __builtin_trap();
}

bool all_zero(std::span<const std::byte> b) {
  for (auto x : b)
    if (x != std::byte{0}) return false;
  return true;
}

// What the engine must answer before any handler runs; ok = the handler runs.
errc expected_verdict(const rule& r, std::span<const std::byte> user, std::vector<std::byte>& request) {
  if (user.size() < 4) return errc::invalid;
  std::uint32_t size = 0;
  std::memcpy(&size, user.data(), 4);
  if (size > user.size()) return errc::fault;
  if (size < r.min_size) return errc::invalid;
  if (size > r.size && !all_zero(user.subspan(r.size, size - r.size))) return errc::too_big;
  request.assign(r.size, std::byte{0});
  std::memcpy(request.data(), user.data(), std::min<std::size_t>(size, r.size));
  std::uint32_t flags = 0;
  std::memcpy(&flags, request.data() + 4, 4);
  if (flags & ~r.flags) return errc::invalid;
  for (std::size_t i = 0; i < r.nr_reserved; ++i)
    if (!all_zero(std::span{request}.subspan(r.reserved[i].offset, r.reserved[i].bytes))) return errc::invalid;
  return errc::ok;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  std::size_t pos = 3;
  unsigned long cmd = 0;
  if (data[0] < 2 * table.size()) {
    cmd = table[data[0] % table.size()].cmd;
  } else {
    if (size < 7) return 0;
    std::uint32_t raw = 0;
    std::memcpy(&raw, data + 3, 4);
    cmd = raw;
    pos = 7;
  }
  fuzz_ctx ctx;
  ctx.reply = handler_replies[data[1] % handler_replies.size()];
  ctx.pattern = data[2];

  const std::vector<std::byte> before(reinterpret_cast<const std::byte*>(data + pos),
                                      reinterpret_cast<const std::byte*>(data + size));
  std::vector<std::byte> user = before;  // exact size: ASan guards both ends
  const errc got = abi::dispatch(std::span<const abi::ioctl_op<fuzz_ctx>>{table}, ctx, cmd, std::span{user});

  const rule* r = nullptr;
  for (const auto& candidate : rules)
    if (candidate.cmd == cmd) r = &candidate;
  if (!r) {
    if (got != errc::not_tty || ctx.called || user != before) finding(cmd, "unknown command not refused cleanly", got, errc::not_tty);
    return 0;
  }
  std::vector<std::byte> request;
  const errc verdict = expected_verdict(*r, before, request);
  if (verdict != errc::ok) {
    if (got != verdict) finding(cmd, "wrong verdict on a bad request", got, verdict);
    if (ctx.called) finding(cmd, "handler ran for a request that breaks a rule", got, verdict);
    if (user != before) finding(cmd, "buffer written for a refused request", got, verdict);
    return 0;
  }
  if (!ctx.called) finding(cmd, "valid request never reached its handler", got, ctx.reply);
  if (got != ctx.reply) finding(cmd, "engine changed the handler's answer", got, ctx.reply);
  if (ctx.seen != request) finding(cmd, "handler saw other bytes than the caller's (zero-extended)", got, ctx.reply);
  std::vector<std::byte> want = before;
  if (got == errc::ok || got == errc::overflow) {
    std::uint32_t declared = 0;
    std::memcpy(&declared, before.data(), 4);
    std::memcpy(want.data(), ctx.written.data(), std::min<std::size_t>(declared, r->size));
  }
  if (user != want) finding(cmd, "reply written wrongly (on failure, or beyond min(size, sizeof))", got, ctx.reply);
  return 0;
}
