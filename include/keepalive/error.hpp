// One error vocabulary for the whole library. Every errc is exactly one errno
// of the uapi contract (uapi/linux/vfio_keepalive.h, "errno contract"), so an
// error crosses the ABI seam unchanged in both directions.
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace keepalive {

enum class errc : int {
  ok = 0,
  not_tty = ENOTTY,             // unknown ioctl
  invalid = EINVAL,             // size too small, unknown flag, reserved != 0, bad field
  too_big = E2BIG,              // non-zero trailing bytes
  not_supported = EOPNOTSUPP,   // platform cannot keep the interrupts alive
  access_denied = EACCES,       // wrong or missing token
  not_found = ENOENT,           // no such device / not in keepalive
  busy = EBUSY,                 // illegal transition from the current state
  overflow = EOVERFLOW,         // output array too small
  no_memory = ENOMEM,
  again = EAGAIN,               // event queue empty
  protocol = EPROTO,            // handover image corrupt/truncated/unknown version
  io = EIO,                     // device failed
  fault = EFAULT,               // bad user pointer
  bad_fd = EBADF,               // fd not open / not of the right kind
  too_many_files = EMFILE,      // no fd left for a returned file (GET_IOMMUFD)
};

// The errc for a raw errno; errc::io for one outside the contract.
[[nodiscard]] errc errc_from_errno(int e) noexcept;
// Short symbolic name ("EINVAL") and a one-line meaning from the contract.
[[nodiscard]] std::string_view errc_name(errc e) noexcept;
[[nodiscard]] std::string_view errc_meaning(errc e) noexcept;

class error {
 public:
  error(errc code, std::string context) : code_{code}, context_{std::move(context)} {}
  explicit error(errc code) : code_{code} {}

  [[nodiscard]] errc code() const noexcept { return code_; }
  [[nodiscard]] int errno_value() const noexcept { return static_cast<int>(code_); }
  [[nodiscard]] const std::string& context() const noexcept { return context_; }
  // "EACCES (wrong or missing token): reclaim 0000:00:04.0"
  [[nodiscard]] std::string message() const;

  friend bool operator==(const error& a, errc b) noexcept { return a.code_ == b; }

 private:
  errc code_;
  std::string context_;
};

// Minimal expected<T, error> (std::expected is C++23; no Debian package fits).
template <typename T>
class [[nodiscard]] result {
 public:
  result(T value) : v_{std::in_place_index<0>, std::move(value)} {}  // NOLINT implicit
  result(error e) : v_{std::in_place_index<1>, std::move(e)} {}      // NOLINT implicit
  result(errc c, std::string ctx) : v_{std::in_place_index<1>, error{c, std::move(ctx)}} {}

  [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  [[nodiscard]] const error& err() const& { return std::get<1>(v_); }
  [[nodiscard]] errc code() const noexcept { return has_value() ? errc::ok : std::get<1>(v_).code(); }

 private:
  std::variant<T, error> v_;
};

template <>
class [[nodiscard]] result<void> {
 public:
  result() = default;
  result(error e) : v_{std::in_place_index<1>, std::move(e)} {}  // NOLINT implicit
  result(errc c, std::string ctx) : v_{std::in_place_index<1>, error{c, std::move(ctx)}} {}

  [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  [[nodiscard]] const error& err() const& { return std::get<1>(v_); }
  [[nodiscard]] errc code() const noexcept { return has_value() ? errc::ok : std::get<1>(v_).code(); }

 private:
  std::variant<std::monostate, error> v_;
};

using status = result<void>;

}  // namespace keepalive
