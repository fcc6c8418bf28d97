// State-typed IOMMU domain handles: the keepalive life keeps DID and tables
// through every arc; attach validates the layout; illegal arcs are not callable.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <keepalive/model/domain.hpp>

using namespace keepalive;
using namespace keepalive::model;
using enum fsm::domain_state;

namespace {

template <domain_state From, domain_state To>
concept can_transition =
    requires(domain<From> d) { transition<To>(std::move(d)); } ||
    requires(domain<From> d, domain_id did, hpa root, std::uint8_t levels) {
      transition<To>(std::move(d), did, root, levels);
    };

template <std::size_t... I>
constexpr bool callable_iff_allowed(std::index_sequence<I...>) {
  return ((can_transition<static_cast<domain_state>(I / 5), static_cast<domain_state>(I % 5)> ==
           fsm::domain_allowed(static_cast<domain_state>(I / 5), static_cast<domain_state>(I % 5))) &&
          ...);
}
static_assert(callable_iff_allowed(std::make_index_sequence<25>{}));
static_assert(!can_transition<none, adopted>);
static_assert(!can_transition<preserved, attached>);
static_assert(!can_transition<domain_state::error, attached>);

template <domain_state From>
concept can_adopt = requires(domain<From> d) { adopt(std::move(d)); };
template <domain_state From>
concept can_detach = requires(domain<From> d) { detach(std::move(d)); };
template <domain_state S>
concept has_did = requires(const domain<S>& d) { d.did(); };
static_assert(can_adopt<preserved> && !can_adopt<none> && !can_adopt<attached>);
static_assert(can_detach<attached> && !can_detach<preserved> && !can_detach<adopted>);
static_assert(!has_did<none> && has_did<attached> && has_did<preserved> && has_did<adopted> && !has_did<domain_state::error>);
static_assert(!std::is_copy_constructible_v<domain<preserved>>);
static_assert(!std::is_copy_assignable_v<domain<attached>>);
static_assert(std::is_nothrow_move_constructible_v<domain<adopted>>);
static_assert(std::is_default_constructible_v<domain<none>>);
static_assert(!std::is_default_constructible_v<domain<preserved>>);

const domain_id did{7};
const hpa root{0x7'3000};

domain<attached> attached_domain() {
  auto a = attach(domain<none>{}, did, root, 4);
  REQUIRE(a);
  return std::move(a).value();
}

}  // namespace

TEST_CASE("domain model: keepalive life keeps the same DID and tables throughout") {
  domain<none> n;
  CHECK(n.valid());
  CHECK(well_formed(none, n.record()));
  auto a = attach(std::move(n), did, root, 4);
  CHECK_FALSE(n.valid());  // NOLINT(bugprone-use-after-move)
  REQUIRE(a);
  domain<attached> at = std::move(a).value();
  CHECK(at.did() == did);
  CHECK(at.table_root() == root);
  CHECK(at.levels() == 4);

  domain<preserved> p = preserve(std::move(at));
  CHECK(p.did() == did);
  CHECK(p.table_root() == root);
  domain<adopted> ad = adopt(std::move(p));
  CHECK(ad.did() == did);
  domain<preserved> p2 = preserve(std::move(ad));  // new owner died
  domain<attached> settled = settle(adopt(std::move(p2)));
  CHECK(settled.did() == did);
  CHECK(settled.table_root() == root);
  CHECK(settled.levels() == 4);
  CHECK(well_formed(attached, settled.record()));

  domain<none> gone = detach(std::move(settled));
  CHECK(gone.record().did == domain_id{});
  CHECK(well_formed(none, gone.record()));
}

TEST_CASE("domain model: attach refuses DID 0, an unaligned root and unsupported levels") {
  for (const std::uint8_t levels : {std::uint8_t{3}, std::uint8_t{4}, std::uint8_t{5}})
    CHECK(attach(domain<none>{}, did, root, levels).has_value());
  for (const std::uint8_t levels : {std::uint8_t{0}, std::uint8_t{2}, std::uint8_t{6}})
    CHECK(attach(domain<none>{}, did, root, levels).code() == errc::invalid);
  CHECK(attach(domain<none>{}, domain_id{0}, root, 4).code() == errc::invalid);
  auto bad = attach(domain<none>{}, did, root + 0x800, 4);
  CHECK(bad.code() == errc::invalid);
  domain<none> back = std::move(bad).given_back();
  CHECK(back.valid());
  CHECK(attach(std::move(back), did, root, 3).has_value());
}

TEST_CASE("domain model: discard, failure and reset") {
  domain<none> d = discard(preserve(attached_domain()));
  CHECK(well_formed(none, d.record()));
  domain<domain_state::error> e = fail(adopt(preserve(attached_domain())));
  CHECK(e.record().did == did);  // what the reset has to release
  domain<none> r = reset(std::move(e));
  CHECK(well_formed(none, r.record()));
  CHECK(fail(domain<none>{}).valid());
}

TEST_CASE("domain model: observed()") {
  CHECK(observed<preserved>(domain_record{did, root, 4}).has_value());
  CHECK(observed<preserved>(domain_record{domain_id{0}, root, 4}).code() == errc::invalid);
  CHECK(observed<none>(domain_record{did, root, 4}).code() == errc::invalid);
  auto p = observed<preserved>(domain_record{did, root, 5});
  REQUIRE(p);
  CHECK(adopt(std::move(p).value()).levels() == 5);
}
