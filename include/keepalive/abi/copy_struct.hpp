// The callee side of the extensible-struct rules (Linux copy_struct_from_user
// and iommufd's dispatcher, in userspace form). Used by the sim kernel's
// dispatch table and by the fuzzers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "keepalive/abi/uapi.hpp"
#include "keepalive/error.hpp"

namespace keepalive::abi {

// Copy a user struct of `user.size()` bytes into a kernel struct of `kernel.size()`
// bytes: a shorter user struct is zero-extended; a longer one must be zero past
// the kernel's size (else E2BIG).
[[nodiscard]] inline errc copy_struct(std::span<std::byte> kernel, std::span<const std::byte> user) noexcept {
  const std::size_t n = user.size() < kernel.size() ? user.size() : kernel.size();
  for (std::size_t i = kernel.size(); i < user.size(); ++i)
    if (user[i] != std::byte{0}) return errc::too_big;
  std::memcpy(kernel.data(), user.data(), n);
  std::memset(kernel.data() + n, 0, kernel.size() - n);
  return errc::ok;
}

// Decode a whole request of type T from the caller's bytes, applying every rule
// of the uapi "General ioctl format" in order: size field vs buffer, min_size,
// trailing bytes, unknown flags, reserved fields.
template <uapi_struct T>
[[nodiscard]] result<T> decode_request(std::span<const std::byte> user) {
  using tr = ioctl_traits<T>;
  std::uint32_t size = 0;
  if (user.size() < sizeof size) return {errc::invalid, "request shorter than its size field"};
  std::memcpy(&size, user.data(), sizeof size);
  if (size > user.size()) return {errc::fault, "size field larger than the buffer"};
  if (size < tr::min_size) return {errc::invalid, "size below the minimum"};
  T v{};
  if (auto e = copy_struct(std::as_writable_bytes(std::span{&v, 1}), user.first(size)); e != errc::ok)
    return {e, "non-zero bytes past the known struct"};
  if (v.flags & ~tr::known_flags) return {errc::invalid, "unknown flags"};
  if (!tr::reserved_zero(v)) return {errc::invalid, "reserved field not zero"};
  return v;
}

// Write the reply back: only min(caller's size, sizeof(T)) bytes, never past
// what the caller declared.
template <uapi_struct T>
void encode_reply(std::span<std::byte> user, const T& v) noexcept {
  std::uint32_t size = 0;
  std::memcpy(&size, user.data(), sizeof size);
  const std::size_t n = size < sizeof(T) ? size : sizeof(T);
  std::memcpy(user.data(), &v, n < user.size() ? n : user.size());
}

}  // namespace keepalive::abi
