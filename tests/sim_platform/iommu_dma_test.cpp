#include <doctest/doctest.h>

#include <cstring>

#include "fixture.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::test;

namespace {

const bdf dev{0, 0, 4, 0};
const bdf other{0, 0, 5, 0};
constexpr hpa data_area{8ull << 20};
constexpr iova io_base{0x7f00'0000'0000ull};

struct dma_setup {
  phys_memory mem = make_memory();
  iommu unit{mem};
  translation_tables tables{mem};
  dma_setup() {
    tables.attach(dev);
    unit.set_root_table(tables.root());
  }
};

dma_fault last_fault(const iommu& u) {
  auto f = u.recent_dma_faults();
  REQUIRE_FALSE(f.empty());
  return f.back();
}

}  // namespace

TEST_CASE("DMA through a second-level mapping lands at the mapped host-physical address") {
  dma_setup s;
  s.tables.map(dev, io_base, data_area + 0x3000, 2 * hw::page_bytes, hw::perm::read_write);
  const auto data = pattern(300, 7);
  REQUIRE(s.unit.dma_write(dev.source_id(), io_base + 0xf80, data));  // crosses into the second page
  CHECK(std::memcmp(s.mem.base() + data_area.value() + 0x3000 + 0xf80, data.data(), data.size()) == 0);
  CHECK(all_equal(s.mem, data_area + 0x3000, 0xf80, std::byte{0}));
  CHECK(all_equal(s.mem, data_area, 0x3000, std::byte{0}));  // the identity spot stays untouched

  std::vector<std::byte> back(300);
  REQUIRE(s.unit.dma_read(dev.source_id(), io_base + 0xf80, back));
  CHECK(back == data);
  const auto c = s.unit.counters();
  CHECK(c.dma_ok == 2);
  CHECK(c.dma_faults == 0);
}

TEST_CASE("DMA to an unmapped IOVA faults, writes nothing and is counted for its source ID") {
  dma_setup s;
  s.tables.attach(other);
  s.tables.map(dev, io_base, data_area, hw::page_bytes, hw::perm::read_write);
  const auto data = pattern(64, 1);
  CHECK_FALSE(s.unit.dma_write(dev.source_id(), io_base + hw::page_bytes + 8, data));
  const dma_fault f = last_fault(s.unit);
  CHECK(f.source_id == dev.source_id());
  CHECK(f.address == io_base + hw::page_bytes + 8);
  CHECK(f.write);
  CHECK(f.reason == dma_fault_reason::pte_not_present);
  CHECK(s.unit.dma_faults_for(dev.source_id()) == 1);
  CHECK(s.unit.dma_faults_for(other.source_id()) == 0);
  CHECK(all_equal(s.mem, data_area, 2 * hw::page_bytes, std::byte{0}));

  // The other device's (empty) domain does not see dev's mapping.
  std::vector<std::byte> out(16);
  CHECK_FALSE(s.unit.dma_read(other.source_id(), io_base, out));
  CHECK(last_fault(s.unit).reason == dma_fault_reason::pte_not_present);
  CHECK_FALSE(last_fault(s.unit).write);
  CHECK(s.unit.dma_faults_for(other.source_id()) == 1);
  CHECK(s.unit.counters().dma_faults == 2);
  CHECK(s.unit.counters().dma_ok == 0);
}

TEST_CASE("a transfer that runs into an unmapped page writes nothing at all") {
  dma_setup s;
  s.tables.map(dev, io_base, data_area, hw::page_bytes, hw::perm::read_write);
  const auto data = pattern(256, 3);
  CHECK_FALSE(s.unit.dma_write(dev.source_id(), io_base + (hw::page_bytes - 128), data));
  CHECK(last_fault(s.unit).address == io_base + hw::page_bytes);  // the first faulting byte
  CHECK(last_fault(s.unit).reason == dma_fault_reason::pte_not_present);
  CHECK(all_equal(s.mem, data_area, hw::page_bytes, std::byte{0}));
}

TEST_CASE("root and context entries gate the walk") {
  dma_setup s;
  std::vector<std::byte> buf(8);

  SUBCASE("translation disabled") {
    s.unit.set_root_table(hpa{0});
    CHECK_FALSE(s.unit.dma_read(dev.source_id(), io_base, buf));
    CHECK(last_fault(s.unit).reason == dma_fault_reason::translation_disabled);
  }
  SUBCASE("no root entry for the bus") {
    CHECK_FALSE(s.unit.dma_read(bdf{0, 3, 0, 0}.source_id(), io_base, buf));
    CHECK(last_fault(s.unit).reason == dma_fault_reason::root_not_present);
    CHECK(s.unit.dma_faults_for(bdf{0, 3, 0, 0}.source_id()) == 1);
  }
  SUBCASE("no context entry for the devfn") {
    CHECK_FALSE(s.unit.dma_read(bdf{0, 0, 6, 1}.source_id(), io_base, buf));
    CHECK(last_fault(s.unit).reason == dma_fault_reason::context_not_present);
  }
  SUBCASE("context entry cleared while the mapping stays") {
    s.tables.map(dev, io_base, data_area, hw::page_bytes, hw::perm::read_write);
    REQUIRE(s.unit.dma_read(dev.source_id(), io_base, buf));
    auto ce = s.tables.context(dev);
    ce.set_present(false);
    s.tables.set_context(dev, ce);
    CHECK_FALSE(s.unit.dma_read(dev.source_id(), io_base, buf));
    CHECK(last_fault(s.unit).reason == dma_fault_reason::context_not_present);
  }
  SUBCASE("invalid context entries") {
    s.tables.map(dev, io_base, data_area, hw::page_bytes, hw::perm::read_write);
    const auto good = s.tables.context(dev);
    auto reserved = hw::context_entry::from_words(good.lo() | (1u << 5), good.hi());
    auto dev_tlb = good;
    dev_tlb.set_translation_type(hw::translation_type::dev_iotlb);
    auto tt3 = good;
    tt3.set_translation_type(hw::translation_type::reserved);
    auto aw0 = good;
    aw0.set_address_width(0);
    auto aw7 = good;
    aw7.set_address_width(7);
    for (const auto& bad : {reserved, dev_tlb, tt3, aw0, aw7}) {
      s.tables.set_context(dev, bad);
      CHECK_FALSE(s.unit.dma_read(dev.source_id(), io_base, buf));
      CHECK(last_fault(s.unit).reason == dma_fault_reason::context_invalid);
    }
    s.tables.set_context(dev, good);
    CHECK(s.unit.dma_read(dev.source_id(), io_base, buf));
    CHECK(s.unit.counters().dma_faults == 5);
  }
  SUBCASE("root table pointing outside physical memory") {
    s.unit.set_root_table(hpa{s.mem.size()});
    CHECK_FALSE(s.unit.dma_read(dev.source_id(), io_base, buf));
    CHECK(last_fault(s.unit).reason == dma_fault_reason::outside_memory);
  }
  SUBCASE("scalable-mode root table is not implemented") {
    s.unit.set_root_table(hpa{s.tables.root().value() | hw::rtaddr_scalable_mode});
    CHECK_FALSE(s.unit.dma_read(dev.source_id(), io_base, buf));
    CHECK(last_fault(s.unit).reason == dma_fault_reason::translation_disabled);
  }
}

TEST_CASE("permissions of the leaf decide the access") {
  dma_setup s;
  s.tables.map(dev, io_base, data_area, hw::page_bytes, hw::perm::read);
  s.tables.map(dev, io_base + hw::page_bytes, data_area + hw::page_bytes, hw::page_bytes, hw::perm::write);
  std::memset(s.mem.base() + data_area.value(), 0x5a, 16);
  const auto data = pattern(16, 9);
  std::vector<std::byte> buf(16);

  CHECK_FALSE(s.unit.dma_write(dev.source_id(), io_base, data));
  CHECK(last_fault(s.unit).reason == dma_fault_reason::write_not_allowed);
  CHECK(last_fault(s.unit).write);
  CHECK(all_equal(s.mem, data_area, 16, std::byte{0x5a}));
  REQUIRE(s.unit.dma_read(dev.source_id(), io_base, buf));
  CHECK(buf == std::vector<std::byte>(16, std::byte{0x5a}));

  CHECK_FALSE(s.unit.dma_read(dev.source_id(), io_base + hw::page_bytes, buf));
  CHECK(last_fault(s.unit).reason == dma_fault_reason::read_not_allowed);
  CHECK(s.unit.dma_write(dev.source_id(), io_base + hw::page_bytes, data));
  CHECK(std::memcmp(s.mem.base() + data_area.value() + hw::page_bytes, data.data(), 16) == 0);
}

TEST_CASE("an IOVA beyond the domain's address width faults") {
  dma_setup s;
  std::vector<std::byte> buf(8);
  CHECK_FALSE(s.unit.dma_read(dev.source_id(), iova{1ull << 48}, buf));
  CHECK(last_fault(s.unit).reason == dma_fault_reason::address_beyond_width);
}

TEST_CASE("a mapping to a host address outside physical memory faults instead of writing there") {
  dma_setup s;
  s.tables.map(dev, io_base, hpa{s.mem.size() - hw::page_bytes}, 2 * hw::page_bytes, hw::perm::read_write);
  const auto data = pattern(32, 2);
  CHECK(s.unit.dma_write(dev.source_id(), io_base, data));
  CHECK_FALSE(s.unit.dma_write(dev.source_id(), io_base + hw::page_bytes, data));
  CHECK(last_fault(s.unit).reason == dma_fault_reason::outside_memory);
  CHECK_FALSE(s.unit.dma_write(dev.source_id(), io_base + (hw::page_bytes - 16), data));  // straddles the end
  CHECK(last_fault(s.unit).reason == dma_fault_reason::outside_memory);
  CHECK(all_equal(s.mem, hpa{s.mem.size() - hw::page_bytes} + 32, hw::page_bytes - 32, std::byte{0}));
}

TEST_CASE("superpage mappings and pass-through contexts translate") {
  dma_setup s;
  s.tables.map(dev, iova{0x4000'0000}, hpa{4ull << 20}, 2ull << 20, hw::perm::read_write, true);
  const auto data = pattern(8192, 4);
  REQUIRE(s.unit.dma_write(dev.source_id(), iova{0x4000'0000 + 0x10000 - 100}, data));
  CHECK(std::memcmp(s.mem.base() + (4ull << 20) + 0x10000 - 100, data.data(), data.size()) == 0);

  const bdf pt{0, 0, 7, 0};
  s.tables.attach(pt, 4, hw::translation_type::pass_through);
  REQUIRE(s.unit.dma_write(pt.source_id(), iova{data_area.value() + 12}, data));
  CHECK(std::memcmp(s.mem.base() + data_area.value() + 12, data.data(), data.size()) == 0);
  CHECK_FALSE(s.unit.dma_write(pt.source_id(), iova{s.mem.size() - 8}, data));
  CHECK(last_fault(s.unit).reason == dma_fault_reason::outside_memory);
}

TEST_CASE("the fault log keeps the last 64 faults in order; the count keeps them all") {
  dma_setup s;
  std::vector<std::byte> buf(8);
  for (std::uint64_t i = 0; i < 100; ++i)
    CHECK_FALSE(s.unit.dma_read(dev.source_id(), io_base + i * hw::page_bytes, buf));
  const auto log = s.unit.recent_dma_faults();
  REQUIRE(log.size() == 64);
  for (std::size_t i = 0; i < 64; ++i) CHECK(log[i].address == io_base + (36 + i) * hw::page_bytes);
  CHECK(s.unit.dma_faults_for(dev.source_id()) == 100);
  CHECK(s.unit.counters().dma_faults == 100);
}

TEST_CASE("an MSI-X write outside the interrupt window is an ordinary remapped DMA write") {
  dma_setup s;
  s.tables.map(dev, io_base, data_area, hw::page_bytes, hw::perm::read_write);
  s.unit.msi(dev.source_id(), io_base.value() + 0x40, 0xdeadbeef);
  std::uint32_t v = 0;
  std::memcpy(&v, s.mem.base() + data_area.value() + 0x40, 4);
  CHECK(v == 0xdeadbeef);
  s.unit.msi(dev.source_id(), 0x1000, 1);  // unmapped: a DMA fault, not an interrupt
  CHECK(last_fault(s.unit).reason == dma_fault_reason::pte_not_present);
  CHECK(s.unit.counters().ir_faults == 0);
}

TEST_CASE("fault reasons have names") {
  CHECK(std::string{to_string(dma_fault_reason::pte_not_present)} == "page-table entry not present");
  CHECK(std::string{to_string(ir_fault_reason::source_id_mismatch)} == "source ID does not match the IRTE");
}
