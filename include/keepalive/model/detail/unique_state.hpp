// The move-only core of every state-typed handle: a record plus an engaged
// flag. Moving out leaves the source disengaged; touching a disengaged record
// asserts (and, with NDEBUG, reads the record's defaults).
#pragma once

#include <cassert>
#include <utility>

namespace keepalive::model::detail {

template <typename Record>
class unique_state {
 public:
  unique_state() = default;
  explicit unique_state(Record r) noexcept : record_{std::move(r)}, engaged_{true} {}
  unique_state(unique_state&& o) noexcept
      : record_{std::exchange(o.record_, Record{})}, engaged_{std::exchange(o.engaged_, false)} {}
  unique_state& operator=(unique_state&& o) noexcept {
    if (this != &o) {
      record_ = std::exchange(o.record_, Record{});
      engaged_ = std::exchange(o.engaged_, false);
    }
    return *this;
  }
  unique_state(const unique_state&) = delete;
  unique_state& operator=(const unique_state&) = delete;
  ~unique_state() = default;

  [[nodiscard]] bool engaged() const noexcept { return engaged_; }
  [[nodiscard]] const Record& get() const noexcept {
    assert(engaged_ && "use of a moved-from keepalive handle");
    return record_;
  }
  [[nodiscard]] Record& get() noexcept {
    assert(engaged_ && "use of a moved-from keepalive handle");
    return record_;
  }

 private:
  Record record_{};
  bool engaged_{false};
};

}  // namespace keepalive::model::detail
