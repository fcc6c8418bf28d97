#include <doctest/doctest.h>

#include "fixture.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::test;
using delivery = recorded_sink::delivery;

namespace {

const bdf dev{0, 0, 4, 0};
constexpr hpa ir_base{4ull << 20};
constexpr hpa pid_at{5ull << 20};

struct ir_setup {
  phys_memory mem = make_memory();
  iommu unit{mem};
  ir_table table;
  recorded_sink sink;
  explicit ir_setup(hw::apic_mode mode = hw::apic_mode::x2apic, std::uint8_t s = 7) : table{mem, ir_base, mode, s} {
    unit.set_irta(table.irta());
    unit.set_cpu_sink(sink.make());
  }
  void fire(const hw::msi_message& m, std::uint16_t sid = dev.source_id()) { unit.msi(sid, m.address(), m.data); }
  hw::posted_intr_desc& pid() { return *reinterpret_cast<hw::posted_intr_desc*>(mem.base() + pid_at.value()); }
  ir_fault last_fault() {
    auto f = unit.recent_ir_faults();
    REQUIRE_FALSE(f.empty());
    return f.back();
  }
};

hw::irte remapped(std::uint8_t vec, std::uint32_t apic, hw::apic_mode mode, std::uint16_t sid = dev.source_id()) {
  return hw::make_remapped({.vec = vector{vec}, .destination = apic_id{apic}, .mode = mode, .sid = sid});
}

hw::irte posted(std::uint8_t vv, bool urgent = false, hpa desc = pid_at) {
  return hw::make_posted({.vec = vector{vv}, .descriptor = desc, .sid = dev.source_id(), .urgent = urgent});
}

}  // namespace

TEST_CASE("a remapped IRTE delivers its vector to its destination (x2APIC: 32-bit DST)") {
  ir_setup s{hw::apic_mode::x2apic};
  s.table.set(3, remapped(0x41, 0x12345, hw::apic_mode::x2apic));
  CHECK(s.table.get(3).dst() == 0x12345u);
  s.fire(hw::encode_remappable(irte_index{3}));
  CHECK(s.sink.take() == std::vector<delivery>{{apic_id{0x12345}, vector{0x41}}});
  CHECK(s.unit.counters().irq_remapped == 1);
  CHECK(s.unit.counters().ir_faults == 0);
}

TEST_CASE("a remapped IRTE in xAPIC mode takes the destination from DST bits 15:8") {
  ir_setup s{hw::apic_mode::xapic};
  s.table.set(10, remapped(0x22, 7, hw::apic_mode::xapic));
  CHECK(s.table.get(10).dst() == 0x0700u);  // Linux IRTE_DEST(): id << 8
  // Linux fill_msi_msg(): handle + subhandle with SHV.
  s.fire(hw::encode_remappable(irte_index{8}, std::uint16_t{2}));
  CHECK(s.sink.take() == std::vector<delivery>{{apic_id{7}, vector{0x22}}});

  // DST bits outside 15:8 are reserved in xAPIC mode.
  s.table.set(11, remapped(0x23, 0x107, hw::apic_mode::x2apic));
  s.fire(hw::encode_remappable(irte_index{11}));
  CHECK(s.sink.take().empty());
  CHECK(s.last_fault().reason == ir_fault_reason::reserved_bits);
}

TEST_CASE("a posted IRTE sets the PIR bit and notifies once, through ON") {
  ir_setup s{hw::apic_mode::x2apic};
  s.pid().init_nonatomic(vector{0xf2}, hw::encode_destination(apic_id{5}, hw::apic_mode::x2apic));
  s.table.set(0, posted(0x30));
  s.table.set(1, posted(0x31));
  s.fire(hw::encode_remappable(irte_index{0}));
  CHECK(s.pid().pending().test(vector{0x30}));
  CHECK(s.pid().control().on());
  CHECK(s.sink.take() == std::vector<delivery>{{apic_id{5}, vector{0xf2}}});

  s.fire(hw::encode_remappable(irte_index{1}));  // ON already set: no second notification
  CHECK(s.pid().pending().test(vector{0x31}));
  CHECK(s.pid().pending().count() == 2);
  CHECK(s.sink.take().empty());

  auto drained = s.pid().drain();
  CHECK(drained.count() == 2);
  s.fire(hw::encode_remappable(irte_index{1}));  // ON was cleared by the drain: notify again
  CHECK(s.sink.take() == std::vector<delivery>{{apic_id{5}, vector{0xf2}}});
  const auto c = s.unit.counters();
  CHECK(c.irq_posted == 3);
  CHECK(c.irq_notifications == 2);
  CHECK(c.irq_remapped == 0);
}

TEST_CASE("SN suppresses the notification but not the post; URG overrides SN") {
  ir_setup s{hw::apic_mode::xapic};
  s.pid().init_nonatomic(vector{0xf2}, hw::encode_destination(apic_id{9}, hw::apic_mode::xapic), true);
  s.table.set(0, posted(0x50));
  s.fire(hw::encode_remappable(irte_index{0}));
  CHECK(s.pid().pending().test(vector{0x50}));
  CHECK_FALSE(s.pid().control().on());
  CHECK(s.sink.take().empty());
  CHECK(s.unit.counters().irq_posted == 1);
  CHECK(s.unit.counters().irq_notifications == 0);

  s.table.set(1, posted(0x51, true));
  s.fire(hw::encode_remappable(irte_index{1}));
  CHECK(s.pid().pending().test(vector{0x51}));
  CHECK(s.pid().control().on());
  CHECK(s.sink.take() == std::vector<delivery>{{apic_id{9}, vector{0xf2}}});  // NDST decoded per xAPIC
}

TEST_CASE("interrupt-remapping faults block the interrupt and say why") {
  ir_setup s{hw::apic_mode::x2apic, 3};  // 16 entries
  s.pid().init_nonatomic(vector{0xf2}, 0);
  s.table.set(0, remapped(0x41, 1, hw::apic_mode::x2apic));
  ir_fault_reason want{};
  std::uint32_t want_index = 0;
  std::uint16_t sid = dev.source_id();
  hw::msi_message m = hw::encode_remappable(irte_index{0});

  SUBCASE("not present") {
    auto e = remapped(0x41, 1, hw::apic_mode::x2apic);
    e.set_present(false);
    s.table.set(2, e);
    m = hw::encode_remappable(irte_index{2});
    want = ir_fault_reason::not_present;
    want_index = 2;
  }
  SUBCASE("index beyond the table") {
    m = hw::encode_remappable(irte_index{15}, std::uint16_t{1});
    want = ir_fault_reason::index_out_of_table;
    want_index = 16;
  }
  SUBCASE("source ID mismatch") {
    sid = bdf{0, 0, 5, 0}.source_id();
    want = ir_fault_reason::source_id_mismatch;
  }
  SUBCASE("compatibility format while remapping is on") {
    m = hw::encode_compatibility({.destination = apic_id{1}, .vec = vector{0x41}});
    want = ir_fault_reason::compatibility_format;
  }
  SUBCASE("remapping disabled") {
    s.unit.set_irta(0);
    want = ir_fault_reason::remapping_disabled;
  }
  SUBCASE("reserved bits") {
    auto e = remapped(0x41, 1, hw::apic_mode::x2apic);
    s.table.set(4, hw::irte::from_words(e.lo() | (1u << 12), e.hi()));
    m = hw::encode_remappable(irte_index{4});
    want = ir_fault_reason::reserved_bits;
    want_index = 4;
  }
  SUBCASE("posted entry on a unit without posted interrupts") {
    s.unit.set_posted_interrupts(false);
    s.table.set(5, posted(0x30));
    m = hw::encode_remappable(irte_index{5});
    want = ir_fault_reason::reserved_bits;
    want_index = 5;
  }
  SUBCASE("posted descriptor outside memory") {
    s.table.set(6, posted(0x30, false, hpa{s.mem.size()}));
    m = hw::encode_remappable(irte_index{6});
    want = ir_fault_reason::descriptor_outside_memory;
    want_index = 6;
  }
  s.fire(m, sid);
  CHECK(s.sink.take().empty());
  CHECK(s.pid().pending().empty());
  const auto c = s.unit.counters();
  CHECK(c.ir_faults == 1);
  CHECK(c.irq_remapped + c.irq_posted + c.irq_notifications == 0);
  const ir_fault f = s.last_fault();
  CHECK(f.reason == want);
  CHECK(f.index == want_index);
  CHECK(f.source_id == sid);
}

TEST_CASE("source validation: SQ ignores function bits, SVT=2 checks a bus range, SVT=0 nothing") {
  ir_setup s;
  auto e = remapped(0x41, 1, hw::apic_mode::x2apic, bdf{0, 0, 4, 0}.source_id());
  e.set_sq(hw::source_qualifier::ignore_3);
  s.table.set(0, e);
  s.fire(hw::encode_remappable(irte_index{0}), bdf{0, 0, 4, 7}.source_id());  // function differs, ignored
  CHECK(s.sink.take().size() == 1);
  s.fire(hw::encode_remappable(irte_index{0}), bdf{0, 0, 5, 0}.source_id());
  CHECK(s.sink.take().empty());
  CHECK(s.last_fault().reason == ir_fault_reason::source_id_mismatch);

  auto bus = remapped(0x42, 1, hw::apic_mode::x2apic, 0x0305);  // buses 3..5
  bus.set_svt(hw::source_validation::bus);
  s.table.set(1, bus);
  s.fire(hw::encode_remappable(irte_index{1}), bdf{0, 4, 1, 0}.source_id());
  CHECK(s.sink.take().size() == 1);
  s.fire(hw::encode_remappable(irte_index{1}), bdf{0, 6, 1, 0}.source_id());
  CHECK(s.sink.take().empty());

  auto none = remapped(0x43, 1, hw::apic_mode::x2apic, 0x1234);
  none.set_svt(hw::source_validation::none);
  s.table.set(2, none);
  s.fire(hw::encode_remappable(irte_index{2}), bdf{0, 9, 9, 1}.source_id());
  CHECK(s.sink.take().size() == 1);
  CHECK(s.unit.counters().ir_faults == 2);
}

TEST_CASE("an interrupt no CPU takes is lost and counted") {
  ir_setup s;
  s.table.set(0, remapped(0x41, 1, hw::apic_mode::x2apic));
  s.sink.accept = false;
  s.fire(hw::encode_remappable(irte_index{0}));
  CHECK(s.sink.take().size() == 1);
  CHECK(s.unit.counters().irq_no_cpu == 1);

  s.unit.set_cpu_sink(nullptr);  // kernel down
  s.fire(hw::encode_remappable(irte_index{0}));
  CHECK(s.unit.counters().irq_no_cpu == 2);
  CHECK(s.unit.counters().irq_remapped == 2);

  // A post needs no CPU; only its notification is lost.
  s.pid().init_nonatomic(vector{0xf2}, 3);
  s.table.set(1, posted(0x60));
  s.fire(hw::encode_remappable(irte_index{1}));
  CHECK(s.pid().pending().test(vector{0x60}));
  CHECK(s.unit.counters().irq_no_cpu == 3);
}

TEST_CASE("the sink may call back into the IOMMU: no lock is held while it runs") {
  ir_setup s;
  s.table.set(0, remapped(0x41, 1, hw::apic_mode::x2apic));
  int nested = 0;
  s.unit.set_cpu_sink([&](apic_id, vector) {
    if (nested++ == 0) {
      s.unit.set_cpu_sink(s.sink.make());  // replaces the running sink
      (void)s.unit.counters();
      (void)s.unit.recent_ir_faults();
      s.fire(hw::encode_remappable(irte_index{0}));
    }
    return true;
  });
  s.fire(hw::encode_remappable(irte_index{0}));
  CHECK(nested == 1);
  CHECK(s.sink.take().size() == 1);
  CHECK(s.unit.counters().irq_remapped == 2);
}
