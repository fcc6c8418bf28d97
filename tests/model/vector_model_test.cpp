// State-typed MSI-X vector handles: the posted and the masking lives, the
// refusals that give the handle back, and what is not callable.
#include <doctest/doctest.h>

#include <cstddef>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include <keepalive/model/vector.hpp>

using namespace keepalive;
using namespace keepalive::model;
// In a namespace: at global scope the enumerator `free` would clash with ::free.
namespace {
using enum fsm::vector_state;

template <vector_state From, vector_state To>
concept can_transition =
    requires(msix_vector<From> v) { transition<To>(std::move(v)); } ||
    requires(msix_vector<From> v, irte_index i, keepalive::vector g) { transition<To>(std::move(v), i, g); } ||
    requires(msix_vector<From> v, hpa p) { transition<To>(std::move(v), p); } ||
    requires(msix_vector<From> v, std::optional<hpa> p) { transition<To>(std::move(v), p); };

template <std::size_t... I>
constexpr bool callable_iff_allowed(std::index_sequence<I...>) {
  return ((can_transition<static_cast<vector_state>(I / 6), static_cast<vector_state>(I % 6)> ==
           fsm::vector_allowed(static_cast<vector_state>(I / 6), static_cast<vector_state>(I % 6))) &&
          ...);
}
static_assert(callable_iff_allowed(std::make_index_sequence<36>{}));
static_assert(!can_transition<free, posted>);
static_assert(!can_transition<preserved, posted>);
static_assert(!can_transition<posted, reconnected>);
static_assert(!can_transition<vector_state::error, remapped>);

template <vector_state From>
concept can_connect = requires(msix_vector<From> v, hpa p) { connect(std::move(v), p); };
template <vector_state From>
concept can_teardown = requires(msix_vector<From> v) { teardown(std::move(v)); };
template <vector_state S>
concept has_pid = requires(const msix_vector<S>& v) { v.pid(); };
template <vector_state S>
concept has_irte = requires(const msix_vector<S>& v) { v.irte(); };
static_assert(can_connect<remapped> && !can_connect<free> && !can_connect<preserved>);
static_assert(can_teardown<remapped> && can_teardown<posted> && !can_teardown<preserved>);
static_assert(has_pid<posted> && !has_pid<remapped> && !has_pid<preserved>);
static_assert(!has_irte<free> && has_irte<preserved> && has_irte<reconnected> && !has_irte<vector_state::error>);
static_assert(!std::is_copy_constructible_v<msix_vector<posted>>);
static_assert(!std::is_copy_assignable_v<msix_vector<preserved>>);
static_assert(std::is_nothrow_move_constructible_v<msix_vector<preserved>>);

const msix_index idx{3};
const irte_index irte{0x41};
const keepalive::vector guest{0x23};
const hpa old_pid{0x12'3440};
const hpa new_pid{0x56'7880};

msix_vector<remapped> set_up() { return setup(msix_vector<free>{idx}, irte, guest); }
msix_vector<posted> posted_vector() {
  auto c = connect(set_up(), old_pid);
  REQUIRE(c);
  return std::move(c).value();
}


TEST_CASE("vector model: posted life: kept aside, re-pointed (same IRTE), drained into the new PID") {
  msix_vector<free> v{idx};
  CHECK(v.index() == idx);
  CHECK(well_formed(free, v.record()));
  msix_vector<remapped> m = setup(std::move(v), irte, guest);
  CHECK_FALSE(v.valid());  // NOLINT(bugprone-use-after-move)
  CHECK(m.irte() == irte);
  CHECK(m.guest_vector() == guest);
  auto c = connect(std::move(m), old_pid);
  REQUIRE(c);
  msix_vector<posted> p = std::move(c).value();
  CHECK(p.pid() == old_pid);

  msix_vector<preserved> kept = preserve(std::move(p));
  CHECK(kept.kept_pid() == old_pid);
  CHECK_FALSE(kept.masked());
  CHECK(kept.irte() == irte);

  auto rc = reconnect(std::move(kept), new_pid);
  REQUIRE(rc);
  msix_vector<reconnected> r = std::move(rc).value();
  CHECK(r.irte() == irte);  // not re-allocated
  CHECK(r.index() == idx);
  CHECK(r.new_pid() == new_pid);
  CHECK(r.old_pid() == old_pid);
  CHECK(well_formed(reconnected, r.record()));

  auto drained = drain(std::move(r));
  REQUIRE(std::holds_alternative<msix_vector<posted>>(drained));
  msix_vector<posted>& now = std::get<msix_vector<posted>>(drained);
  CHECK(now.pid() == new_pid);
  CHECK(now.irte() == irte);
  CHECK(now.guest_vector() == guest);
  CHECK_FALSE(now.record().old_pid);
  CHECK(well_formed(posted, now.record()));

  msix_vector<free> done = teardown(std::move(now));
  CHECK(done.index() == idx);
  CHECK_FALSE(done.record().irte);
  CHECK(well_formed(free, done.record()));
}

TEST_CASE("vector model: masking life: preserved masked, new owner without posting, drained into its eventfd") {
  msix_vector<preserved> kept = preserve(set_up());
  CHECK(kept.masked());
  CHECK_FALSE(kept.kept_pid());
  auto rc = reconnect(std::move(kept), std::nullopt);
  REQUIRE(rc);
  CHECK_FALSE(rc->new_pid());
  CHECK_FALSE(rc->old_pid());
  auto drained = drain(std::move(rc).value());
  REQUIRE(std::holds_alternative<msix_vector<remapped>>(drained));
  CHECK(std::get<msix_vector<remapped>>(drained).irte() == irte);
}

TEST_CASE("vector model: a posted vector whose new owner does not post drains to remapped") {
  auto rc = reconnect(preserve(posted_vector()), std::nullopt);
  REQUIRE(rc);
  CHECK(rc->old_pid() == old_pid);
  auto wrong = transition<posted>(std::move(rc).value());  // no PID to post into
  CHECK(wrong.code() == errc::invalid);
  msix_vector<reconnected> back = std::move(wrong).given_back();
  CHECK(back.valid());
  CHECK(back.old_pid() == old_pid);
  auto right = transition<remapped>(std::move(back));
  REQUIRE(right);
  CHECK(right->irte() == irte);
}

TEST_CASE("vector model: misaligned PIDs are refused, the handle given back unchanged") {
  auto c = connect(set_up(), hpa{0x1000 + 8});
  CHECK(c.code() == errc::invalid);
  msix_vector<remapped> m = std::move(c).given_back();
  CHECK(m.irte() == irte);
  auto rc = reconnect(preserve(posted_vector()), hpa{0x2020});
  CHECK(rc.code() == errc::invalid);
  msix_vector<preserved> kept = std::move(rc).given_back();
  CHECK(kept.kept_pid() == old_pid);
  auto to_remapped = transition<remapped>(std::move(reconnect(std::move(kept), new_pid).value()));
  CHECK(to_remapped.code() == errc::invalid);  // the new owner posts: drain to posted
}

TEST_CASE("vector model: discard, failure and reset") {
  msix_vector<free> gone = discard(preserve(posted_vector()));
  CHECK(gone.index() == idx);
  CHECK(well_formed(free, gone.record()));
  msix_vector<vector_state::error> e = fail(posted_vector());
  CHECK(e.index() == idx);
  msix_vector<free> back = reset(std::move(e));
  CHECK(back.valid());
  CHECK_FALSE(back.record().pid);
  CHECK(fail(msix_vector<free>{idx}).valid());
  msix_vector<remapped> d = disconnect(posted_vector());
  CHECK_FALSE(d.record().pid);
  CHECK(well_formed(remapped, d.record()));
}

TEST_CASE("vector model: observed() and well_formed") {
  CHECK(observed<posted>(msix_vector_record{idx, irte, guest, old_pid, {}}).has_value());
  CHECK(observed<posted>(msix_vector_record{idx, irte, guest, {}, {}}).code() == errc::invalid);
  CHECK(observed<posted>(msix_vector_record{idx, irte, guest, hpa{0x1004}, {}}).code() == errc::invalid);
  CHECK(observed<free>(msix_vector_record{idx, irte, {}, {}, {}}).code() == errc::invalid);
  CHECK(observed<preserved>(msix_vector_record{idx, irte, guest, {}, {}}).has_value());  // masked
  CHECK(observed<remapped>(msix_vector_record{idx, irte, guest, {}, old_pid}).code() == errc::invalid);
  auto p = observed<preserved>(msix_vector_record{idx, irte, guest, old_pid, {}});
  REQUIRE(p);
  CHECK(reconnect(std::move(p).value(), new_pid).has_value());
}

}  // namespace
