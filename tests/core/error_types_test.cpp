#include <doctest/doctest.h>
#include <linux/vfio_keepalive.h>

#include <keepalive/error.hpp>
#include <keepalive/types.hpp>

using namespace keepalive;

TEST_CASE("errc is the errno of the uapi contract, one to one") {
  CHECK(static_cast<int>(errc::invalid) == EINVAL);
  CHECK(static_cast<int>(errc::too_big) == E2BIG);
  CHECK(static_cast<int>(errc::access_denied) == EACCES);
  CHECK(static_cast<int>(errc::busy) == EBUSY);
  CHECK(static_cast<int>(errc::protocol) == EPROTO);
  for (int e : {ENOTTY, EINVAL, E2BIG, EOPNOTSUPP, EACCES, ENOENT, EBUSY, EOVERFLOW, ENOMEM, EAGAIN, EPROTO, EIO,
                EFAULT, EBADF, EMFILE})
    CHECK(static_cast<int>(errc_from_errno(e)) == e);
  CHECK(errc_from_errno(EXDEV) == errc::io);  // outside the contract
  CHECK(errc_name(errc::access_denied) == "EACCES");
}

TEST_CASE("error message carries name, meaning and context") {
  error e{errc::access_denied, "reclaim 0000:00:04.0"};
  CHECK(e.message() == "EACCES (wrong or missing token): reclaim 0000:00:04.0");
  CHECK(e == errc::access_denied);
  result<int> r = e;
  CHECK_FALSE(r);
  CHECK(r.code() == errc::access_denied);
  result<int> ok = 7;
  REQUIRE(ok);
  CHECK(*ok == 7);
  CHECK(ok.code() == errc::ok);
  status s;
  CHECK(s);
  status bad{errc::busy, "double enter"};
  CHECK(bad.err().message() == "EBUSY (not a legal transition from the current state): double enter");
}

TEST_CASE("bdf packs like the uapi and VT-d source IDs") {
  bdf b{0, 0x3a, 0x1f, 7};
  CHECK(b.packed() == ((0x3au << 8) | (0x1fu << 3) | 7u));
  CHECK(b.source_id() == 0x3aff);
  CHECK(b.device() == 0x1f);
  CHECK(b.function() == 7);
  CHECK(b.to_string() == "0000:3a:1f.7");
  CHECK(bdf::parse("0000:3a:1f.7") == b);
  CHECK(bdf::parse("3a:1f.7") == b);
  CHECK(bdf::parse("0001:00:04.0")->segment() == 1);
  CHECK_FALSE(bdf::parse("0000:3a:20.0"));  // device > 31
  CHECK_FALSE(bdf::parse("0000:3a:1f.8"));  // function > 7
  CHECK_FALSE(bdf::parse("00:3a:1f.7"));
  CHECK_FALSE(bdf::parse("zz:00.0"));
}

TEST_CASE("token is a UUID, nil is recognisable, generate gives v4") {
  auto t = token::parse("123e4567-e89b-12d3-a456-426614174000");
  REQUIRE(t);
  CHECK(t->raw()[0] == 0x12);
  CHECK(t->raw()[15] == 0x00);
  CHECK(t->to_string() == "123e4567-e89b-12d3-a456-426614174000");
  CHECK_FALSE(token::parse("123e4567e89b-12d3-a456-426614174000-"));
  CHECK_FALSE(token::parse("123e4567-e89b-12d3-a456-42661417400g"));
  CHECK(token{}.is_nil());
  auto g1 = token::generate(), g2 = token::generate();
  CHECK_FALSE(g1.is_nil());
  CHECK(g1 != g2);
  CHECK((g1.raw()[6] >> 4) == 4);
  CHECK((g1.raw()[8] & 0xc0) == 0x80);
  static_assert(sizeof(token::bytes) == VFIO_KEEPALIVE_TOKEN_SIZE);
}

TEST_CASE("strong addresses do arithmetic only within their kind") {
  iova a{0x1000};
  CHECK((a + 0x234).value() == 0x1234);
  CHECK((iova{0x3000} - a) == 0x2000);
  static_assert(!std::is_convertible_v<iova, gpa>);
  static_assert(!std::is_convertible_v<std::uint64_t, iova>);
  static_assert(!std::is_convertible_v<irte_index, vector>);
}
