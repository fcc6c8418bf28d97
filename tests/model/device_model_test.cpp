// State-typed device handles: lives that follow the spec compile and run;
// transitions off the table are not even callable.
#include <doctest/doctest.h>

#include <cstddef>
#include <type_traits>
#include <utility>

#include <keepalive/model/device.hpp>

using namespace keepalive;
using namespace keepalive::model;
using enum fsm::device_state;

namespace {

template <device_state From, device_state To>
concept can_transition = requires(device<From> d, const token& t) { transition<To>(std::move(d)); } ||
                         requires(device<From> d, const token& t) { transition<To>(std::move(d), t); };

template <device_state From>
concept can_reclaim = requires(device<From> d, const token& t) { reclaim(std::move(d), t); };
template <device_state From>
concept can_reset = requires(device<From> d) { reset(std::move(d)); };
template <device_state From>
concept can_leave = requires(device<From> d) { leave(std::move(d)); };
template <device_state From>
concept can_prepare = requires(device<From> d) { prepare_stage2(std::move(d)); };
template <device_state From>
concept has_token = requires(const device<From>& d) { d.token(); };

// Every one of the 49 (From, To) pairs is callable exactly when it is an arc.
template <std::size_t... I>
constexpr bool callable_iff_allowed(std::index_sequence<I...>) {
  return ((can_transition<static_cast<device_state>(I / 7), static_cast<device_state>(I % 7)> ==
           fsm::device_allowed(static_cast<device_state>(I / 7), static_cast<device_state>(I % 7))) &&
          ...);
}
static_assert(callable_iff_allowed(std::make_index_sequence<49>{}));

static_assert(!can_transition<running, frozen>);
static_assert(!can_transition<running, reclaimed>);
static_assert(!can_transition<device_state::error, reclaimed>);
static_assert(!can_transition<frozen, running>);
static_assert(!can_transition<kept_alive, kept_alive>);
static_assert(can_transition<running, kept_alive>);
static_assert(can_transition<restored, frozen>);
static_assert(!can_reclaim<running> && !can_reclaim<kept_alive> && !can_reclaim<reclaimed>);
static_assert(can_reclaim<ownerless> && can_reclaim<restored>);
static_assert(!can_reset<frozen> && !can_reset<kept_alive> && !can_reset<reclaimed> && !can_reset<running>);
static_assert(can_reset<ownerless> && can_reset<restored> && can_reset<device_state::error>);
static_assert(!can_leave<ownerless> && can_leave<kept_alive> && can_leave<reclaimed>);
static_assert(!can_prepare<kept_alive> && !can_prepare<reclaimed> && can_prepare<restored>);
static_assert(!has_token<running> && !has_token<device_state::error> && has_token<ownerless> && has_token<frozen>);

static_assert(!std::is_copy_constructible_v<device<running>>);
static_assert(!std::is_copy_assignable_v<device<ownerless>>);
static_assert(!std::is_copy_constructible_v<device<reclaimed>>);
static_assert(std::is_nothrow_move_constructible_v<device<ownerless>>);
static_assert(std::is_nothrow_move_assignable_v<device<frozen>>);
static_assert(std::is_constructible_v<device<running>, bdf>);
static_assert(!std::is_constructible_v<device<ownerless>, bdf>);  // only arcs make one
static_assert(!std::is_default_constructible_v<device<running>>);

const bdf nic{0, 0x3a, 0x00, 1};
const token mine{token::bytes{0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x42, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17,
                              0x40, 0x00}};
const token theirs{token::bytes{0xde, 0xad, 0xbe, 0xef, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1}};

device<kept_alive> entered() {
  auto r = enter(device<running>{nic}, mine);
  REQUIRE(r);
  return std::move(r).value();
}

}  // namespace

TEST_CASE("device model: stage-1 life, running -> kept_alive -> ownerless -> reclaimed -> running") {
  device<running> d{nic};
  CHECK(d.valid());
  CHECK(d.bdf() == nic);
  CHECK(well_formed(running, d.record()));

  auto e = enter(std::move(d), mine);
  CHECK_FALSE(d.valid());  // NOLINT(bugprone-use-after-move): moved-from is detectably empty
  REQUIRE(e);
  CHECK(e.code() == errc::ok);
  device<kept_alive> k = std::move(e).value();
  CHECK(k.token() == mine);
  CHECK(k.bdf() == nic);

  device<ownerless> o = close(std::move(k));
  CHECK_FALSE(k.valid());  // NOLINT(bugprone-use-after-move)
  CHECK(o.token() == mine);
  CHECK(o.bdf() == nic);
  CHECK(well_formed(ownerless, o.record()));

  auto r = reclaim(std::move(o), mine);
  REQUIRE(r);
  device<reclaimed> c = std::move(r).value();
  CHECK(c.token() == mine);

  device<running> back = leave(std::move(c));
  CHECK(back.valid());
  CHECK(back.bdf() == nic);
  CHECK(back.record().token.is_nil());  // leave forgets the token
  CHECK(well_formed(running, back.record()));
}

TEST_CASE("device model: stage-2 life, with a second kexec, an abort and a reset") {
  device<ownerless> o = close(entered());
  device<frozen> f = prepare_stage2(std::move(o));
  CHECK(f.token() == mine);
  device<ownerless> thawed = abort_stage2(std::move(f));  // STAGE2_ABORT
  CHECK(thawed.token() == mine);

  device<restored> s = finish_kexec(prepare_stage2(std::move(thawed)));
  CHECK(s.token() == mine);
  device<restored> s2 = finish_kexec(prepare_stage2(std::move(s)));  // second kexec before a reclaim
  CHECK(s2.bdf() == nic);

  auto r = reclaim(std::move(s2), mine);
  REQUIRE(r);
  // The new owner dies before leaving: reclaimable again with the same token.
  device<ownerless> again = close(std::move(r).value());
  CHECK(again.token() == mine);
  auto r2 = reclaim(std::move(again), mine);
  REQUIRE(r2);
  CHECK(leave(std::move(r2).value()).record().token.is_nil());

  // Operator reset from RESTORED, and failure then reset.
  device<restored> s3 = finish_kexec(prepare_stage2(close(entered())));
  device<running> flr = reset(std::move(s3));
  CHECK(flr.record().token.is_nil());
  device<device_state::error> broken = fail(std::move(flr));
  CHECK(broken.bdf() == nic);
  CHECK(well_formed(device_state::error, broken.record()));
  device<running> after = reset(std::move(broken));
  CHECK(after.valid());
}

TEST_CASE("device model: a wrong token is access_denied and the caller keeps a usable handle") {
  device<ownerless> o = close(entered());
  auto r = reclaim(std::move(o), theirs);
  CHECK_FALSE(r);
  CHECK(r.code() == errc::access_denied);
  CHECK(r.err().code() == errc::access_denied);
  device<ownerless> kept = std::move(r).given_back();
  CHECK(kept.valid());
  CHECK(kept.bdf() == nic);
  CHECK(kept.token() == mine);  // nothing changed

  auto nil = reclaim(std::move(kept), token{});  // missing token
  CHECK(nil.code() == errc::access_denied);
  device<ownerless> still = std::move(nil).given_back();

  auto ok = reclaim(std::move(still), mine);
  REQUIRE(ok);
  CHECK(ok->token() == mine);
  CHECK(ok->valid());
}

TEST_CASE("device model: enter with the nil token is invalid and gives the running handle back") {
  auto r = enter(device<running>{nic}, token{});
  CHECK(r.code() == errc::invalid);
  device<running> d = std::move(r).given_back();
  CHECK(d.valid());
  CHECK(d.bdf() == nic);
  auto again = enter(std::move(d), theirs);
  REQUIRE(again);
  CHECK(again->token() == theirs);
}

TEST_CASE("device model: moved-from handles are empty, move assignment transfers") {
  device<kept_alive> a = entered();
  device<kept_alive> b = std::move(a);
  CHECK_FALSE(a.valid());  // NOLINT(bugprone-use-after-move)
  CHECK(b.valid());
  device<kept_alive> c = entered();
  c = std::move(b);
  CHECK_FALSE(b.valid());  // NOLINT(bugprone-use-after-move)
  CHECK(c.valid());
  CHECK(c.token() == mine);
  device<running> gone = leave(std::move(c));
  CHECK_FALSE(c.valid());  // NOLINT(bugprone-use-after-move)
  CHECK(gone.valid());
}

TEST_CASE("device model: generic transition is the same arc as the named one") {
  device<ownerless> o = transition<ownerless>(entered());
  auto r = transition<reclaimed>(std::move(o), theirs);
  CHECK(r.code() == errc::access_denied);
  auto r2 = transition<reclaimed>(std::move(r).given_back(), mine);
  REQUIRE(r2);
  device<device_state::error> e = transition<device_state::error>(std::move(r2).value());
  CHECK(e.record().token.is_nil());  // failure forgets the token
  CHECK(transition<running>(std::move(e)).valid());
}

TEST_CASE("device model: observed() accepts only records that fit their state") {
  auto ok = observed<ownerless>(device_record{nic, mine});
  REQUIRE(ok);
  CHECK(ok->token() == mine);
  CHECK(observed<ownerless>(device_record{nic, token{}}).code() == errc::invalid);  // kept alive without token
  CHECK(observed<running>(device_record{nic, mine}).code() == errc::invalid);       // running with a token
  auto run = observed<running>(device_record{nic, token{}});
  REQUIRE(run);
  CHECK(run->bdf() == nic);
  auto r = reclaim(std::move(ok).value(), mine);
  CHECK(r.has_value());
}
