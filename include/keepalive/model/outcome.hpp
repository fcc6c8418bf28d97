// The result of a transition that can be refused (a wrong token, a value out of
// range): either the handle in its new state, or the caller's handle given
// back unchanged together with the error. Nothing is lost either way.
//
//   auto r = reclaim(std::move(d), presented);
//   if (!r) { log(r.err().message()); d = std::move(r).given_back(); }
//   else    { device<reclaimed> mine = std::move(r).value(); }
#pragma once

#include <utility>
#include <variant>

#include <keepalive/error.hpp>

namespace keepalive::model {

template <typename Next, typename Previous>
class [[nodiscard]] outcome {
 public:
  outcome(Next next) : v_{std::in_place_index<0>, std::move(next)} {}  // NOLINT implicit: the success path
  outcome(Previous unchanged, error why) : v_{std::in_place_index<1>, refused{std::move(unchanged), std::move(why)}} {}

  [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  [[nodiscard]] errc code() const noexcept { return has_value() ? errc::ok : std::get<1>(v_).why.code(); }

  Next& value() & { return std::get<0>(v_); }
  Next&& value() && { return std::get<0>(std::move(v_)); }
  Next* operator->() { return &value(); }

  // Only when refused: the error, and the caller's handle in its old state.
  [[nodiscard]] const error& err() const& { return std::get<1>(v_).why; }
  Previous& given_back() & { return std::get<1>(v_).unchanged; }
  Previous&& given_back() && { return std::move(std::get<1>(v_).unchanged); }

 private:
  struct refused {
    Previous unchanged;
    error why;
  };
  std::variant<Next, refused> v_;
};

}  // namespace keepalive::model
