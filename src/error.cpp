#include "keepalive/error.hpp"

#include <fmt/format.h>

namespace keepalive {
namespace {
struct errc_row {
  errc code;
  std::string_view name;
  std::string_view meaning;
};
constexpr errc_row errc_table[] = {
    {errc::ok, "OK", "success"},
    {errc::not_tty, "ENOTTY", "unknown ioctl"},
    {errc::invalid, "EINVAL", "malformed request"},
    {errc::too_big, "E2BIG", "non-zero bytes past the known struct"},
    {errc::not_supported, "EOPNOTSUPP", "interrupts cannot be kept alive on this platform"},
    {errc::access_denied, "EACCES", "wrong or missing token"},
    {errc::not_found, "ENOENT", "no such device or not in keepalive"},
    {errc::busy, "EBUSY", "not a legal transition from the current state"},
    {errc::overflow, "EOVERFLOW", "output array too small"},
    {errc::no_memory, "ENOMEM", "out of memory"},
    {errc::again, "EAGAIN", "nothing queued"},
    {errc::protocol, "EPROTO", "handover image corrupt, truncated or of unknown version"},
    {errc::io, "EIO", "device failed"},
    {errc::fault, "EFAULT", "bad address"},
    {errc::bad_fd, "EBADF", "bad file descriptor"},
    {errc::too_many_files, "EMFILE", "no file descriptor left"},
};
const errc_row* find_row(errc e) noexcept {
  for (const auto& row : errc_table)
    if (row.code == e) return &row;
  return nullptr;
}
}  // namespace

errc errc_from_errno(int e) noexcept {
  const auto* row = find_row(static_cast<errc>(e));
  return row ? row->code : errc::io;
}

std::string_view errc_name(errc e) noexcept {
  const auto* row = find_row(e);
  return row ? row->name : "E?";
}

std::string_view errc_meaning(errc e) noexcept {
  const auto* row = find_row(e);
  return row ? row->meaning : "unknown error";
}

std::string error::message() const {
  if (context_.empty()) return fmt::format("{} ({})", errc_name(code_), errc_meaning(code_));
  return fmt::format("{} ({}): {}", errc_name(code_), errc_meaning(code_), context_);
}

}  // namespace keepalive
