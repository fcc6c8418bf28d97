#include <doctest/doctest.h>
#include <linux/vfio_keepalive.h>

#include <cstring>

#include "handover.hpp"
#include "keepalive_handover.h"

using namespace keepalive;
using namespace keepalive::handover;

namespace {
image sample(std::size_t devices = 2, std::size_t vectors = 3) {
  image img;
  img.generation = 4;
  img.event_seq = 77;
  img.iommu = {hpa{0x100000}, 0x200000 | (1u << 11) | 0xf, hpa{0x300000}, 8};
  img.ranges = {{hpa{0x100000}, 0x1000}, {hpa{0x200000}, 0x100000}, {hpa{0x300000}, 0x1000}};
  for (std::size_t d = 0; d < devices; ++d) {
    device_rec dev;
    dev.device = bdf{0, 0, static_cast<std::uint8_t>(4 + d), 0};
    dev.state = VFIO_KEEPALIVE_STATE_FROZEN;
    dev.owner = *token::parse("00112233-4455-6677-8899-aabbccddeeff");
    dev.did = domain_id{static_cast<std::uint16_t>(10 + d)};
    dev.levels = 4;
    dev.irq_mode = VFIO_KEEPALIVE_IRQ_POSTED;
    dev.sl_root = hpa{0x400000 + d * 0x1000};
    dev.bar[0] = 0xfe000000 + d * 0x100000;
    dev.bar_size[0] = 0x100000;
    dev.command = 0x6;
    dev.msix_ctrl = 0x8000 | 15;  // enabled, 16 entries
    for (std::size_t v = 0; v < vectors; ++v)
      dev.vectors.push_back({msix_index{static_cast<std::uint16_t>(v)}, irte_index{static_cast<std::uint16_t>(32 + v)},
                             true, vector{static_cast<std::uint8_t>(0x40 + v)}, hpa{0x300000 + 64 * v}});
    img.devices.push_back(dev);
  }
  return img;
}
void reseal(std::vector<std::byte>& b) {
  std::memset(b.data() + offsetof(keepalive_handover_hdr_ser, checksum), 0, 4);
  const auto sum = crc32c(b);
  std::memcpy(b.data() + offsetof(keepalive_handover_hdr_ser, checksum), &sum, 4);
}
template <typename T>
T* at(std::vector<std::byte>& b, std::size_t off) {
  return reinterpret_cast<T*>(b.data() + off);
}
constexpr std::size_t dev0 = sizeof(keepalive_handover_hdr_ser) + sizeof(keepalive_iommu_ser) + 3 * sizeof(keepalive_range_ser);
constexpr std::size_t vec0 = dev0 + sizeof(keepalive_device_ser);
}  // namespace

TEST_CASE("layout of the handover structs is fixed") {
  static_assert(sizeof(keepalive_handover_hdr_ser) == 80);
  static_assert(sizeof(keepalive_iommu_ser) == 64);
  static_assert(sizeof(keepalive_range_ser) == 16);
  static_assert(sizeof(keepalive_device_ser) == 176);
  static_assert(sizeof(keepalive_vector_ser) == 16);
  static_assert(offsetof(keepalive_handover_hdr_ser, checksum) == 40);
  static_assert(offsetof(keepalive_device_ser, sl_root) == 64);
}

TEST_CASE("crc32c known value") {
  const char* s = "123456789";
  CHECK(crc32c(std::as_bytes(std::span{s, 9})) == 0xE3069283u);
}

TEST_CASE("round trip") {
  for (auto [d, v] : {std::pair{0, 0}, std::pair{1, 1}, std::pair{3, 16}}) {
    const auto img = sample(static_cast<std::size_t>(d), static_cast<std::size_t>(v));
    const auto bytes = encode(img);
    auto back = decode(bytes);
    REQUIRE(back);
    CHECK(*back == img);
  }
}

TEST_CASE("every single-bit corruption is refused") {
  const auto good = encode(sample(2, 3));
  for (std::size_t i = 0; i < good.size(); ++i)
    for (int bit : {0, 5}) {
      auto bad = good;
      bad[i] ^= static_cast<std::byte>(1 << bit);
      auto r = decode(bad);
      CAPTURE(i);
      REQUIRE_FALSE(r);
      CHECK(r.code() == errc::protocol);
    }
}

TEST_CASE("every truncation and any padding is refused") {
  const auto good = encode(sample(2, 3));
  for (std::size_t n = 0; n < good.size(); ++n) {
    auto r = decode(std::span{good}.first(n));
    CAPTURE(n);
    CHECK(r.code() == errc::protocol);
  }
  auto padded = good;
  padded.push_back(std::byte{0});
  CHECK(decode(padded).code() == errc::protocol);
}

TEST_CASE("an unknown compatible string is refused by name") {
  auto b = encode(sample());
  std::memcpy(at<keepalive_handover_hdr_ser>(b, 0)->compatible, "keepalive-handover-v2", 21);
  reseal(b);
  auto r = decode(b);
  REQUIRE_FALSE(r);
  CHECK(r.err().context() == "handover image: unknown compatible \"keepalive-handover-v2\"");

  b = encode(sample());
  at<keepalive_device_ser>(b, dev0)->compatible[20] = '9';
  reseal(b);
  CHECK(decode(b).err().context().find("unknown compatible") != std::string::npos);
}

TEST_CASE("sealed but inconsistent images are refused") {
  struct mutation {
    const char* what;
    void (*apply)(std::vector<std::byte>&);
    const char* expect;
  };
  const mutation cases[] = {
      {"state", [](auto& b) { at<keepalive_device_ser>(b, dev0)->state = VFIO_KEEPALIVE_STATE_OWNERLESS; }, "not FROZEN"},
      {"levels", [](auto& b) { at<keepalive_device_ser>(b, dev0)->levels = 6; }, "paging levels"},
      {"root", [](auto& b) { at<keepalive_device_ser>(b, dev0)->sl_root = 0x400010; }, "page-table root"},
      {"token", [](auto& b) { std::memset(at<keepalive_device_ser>(b, dev0)->token, 0, 16); }, "nil token"},
      {"dup", [](auto& b) { at<keepalive_device_ser>(b, vec0 + 3 * sizeof(keepalive_vector_ser))->bdf = bdf{0, 0, 4, 0}.packed(); }, "listed twice"},
      {"msix", [](auto& b) { at<keepalive_vector_ser>(b, vec0)->msix_index = 16; }, "MSI-X index"},
      {"msix dup", [](auto& b) { at<keepalive_vector_ser>(b, vec0 + 16)->msix_index = 0; }, "MSI-X index"},
      {"pid", [](auto& b) { at<keepalive_vector_ser>(b, vec0)->pid = 0x300020; }, "descriptor address"},
      {"range", [](auto& b) { at<keepalive_range_ser>(b, dev0 - 16)->start = 0x200800; }, "not page aligned"},
      {"overlap", [](auto& b) { at<keepalive_range_ser>(b, dev0 - 16)->start = 0x2ff000; }, "overlap"},
      {"count", [](auto& b) { at<keepalive_handover_hdr_ser>(b, 0)->nr_devices = 3; }, "truncated device"},
      {"many", [](auto& b) { at<keepalive_handover_hdr_ser>(b, 0)->nr_devices = 100000; }, "devices"},
      {"reserved", [](auto& b) { at<keepalive_iommu_ser>(b, sizeof(keepalive_handover_hdr_ser))->__reserved = 1; }, "reserved"},
  };
  for (const auto& m : cases) {
    CAPTURE(m.what);
    auto b = encode(sample(2, 3));
    m.apply(b);
    reseal(b);
    auto r = decode(b);
    REQUIRE_FALSE(r);
    CHECK(r.code() == errc::protocol);
    CHECK(r.err().context().find(m.expect) != std::string::npos);
  }
}

TEST_CASE("salvage finds the devices of a refused image") {
  auto b = encode(sample(3, 2));
  b[b.size() - 1] ^= std::byte{1};  // checksum now wrong
  REQUIRE_FALSE(decode(b));
  const auto list = salvage_device_list(b);
  REQUIRE(list.size() == 3);
  CHECK(list[2] == bdf{0, 0, 6, 0});
  CHECK(salvage_device_list(std::span{b}.first(10)).empty());
}
