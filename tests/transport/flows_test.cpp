// The sim host behind a socket: the conformance suite and the stage-1/2
// flows over the wire, with the guest verifying every packet in its own
// mapping of the physical memory.
#include <fcntl.h>
#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

#include "conformance.hpp"
#include "keepalive/abi/uapi.hpp"
#include "fixture.hpp"
#include "keepalive/detail/json.hpp"
#include "nic_regs.h"

using namespace keepalive;
using namespace keepalive::transport_test;

namespace {
const token tok = *token::parse("3f7d1a2b-6c4e-4f80-9a1b-2c3d4e5f6071");

struct control {
  explicit control(const daemon_fixture& d) : t{d.connect()} {
    auto r = t->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
    REQUIRE(r);
    fd = *r;
  }
  std::vector<abi::device_entry> list() {
    auto r = abi::list_devices(*t, fd);
    REQUIRE(r);
    return *r;
  }
  std::unique_ptr<sim_transport> t;
  int fd = -1;
};

// Stop traffic, let the last moderated interrupt arrive and the guest consume
// everything: afterwards received == packets written.
void drain(daemon_fixture& d, remote_guest& g, remote_vmm& v) {
  REQUIRE(v.write_reg(KA_NIC_RATE_PPS, 0));
  for (int i = 0; i < 1000 && g.received.load() < d.nic().packets; ++i) daemon_fixture::run_for(2);
}

std::uint64_t json_value(const std::string& json, const std::string& key) {
  auto rows = detail::json::parse(json);
  REQUIRE(rows);
  for (const auto& [k, v] : *rows)
    if (k == key) return std::stoull(v);
  FAIL("no key " << key);
  return 0;
}
}  // namespace

TEST_CASE("hello: the memfd, its size, the guest area and the functions") {
  daemon_fixture d{sim::kernel_mode::keepalive, true, 2};
  auto t = d.connect();
  const auto& h = t->host();
  CHECK(h.abi_version == VFIO_KEEPALIVE_ABI_VERSION);
  CHECK_FALSE(h.baseline);
  CHECK(h.posted_interrupts);
  CHECK(h.phys_bytes == test_phys_mib << 20);
  CHECK(t->phys_size() == test_phys_mib << 20);
  CHECK(h.guest_start == 64ull << 20);
  CHECK(t->guest_start() == 64ull << 20);
  CHECK(h.handover_start == 62ull << 20);
  CHECK(h.handover_bytes == 2ull << 20);
  REQUIRE(h.functions.size() == 2);
  CHECK(h.functions[0] == nic0);
  CHECK(h.functions[1] == bdf{0, 0, 5, 0});
  // The mapping IS the host's physical memory.
  auto* p = static_cast<std::uint64_t*>(t->map_phys(h.guest_start, 1 << 20));
  REQUIRE(p != nullptr);
  p[3] = 0x1122334455667788ull;
  CHECK(d.srv->hardware().memory().load64(hpa{h.guest_start + 24}) == 0x1122334455667788ull);
  CHECK(t->phys_offset(p + 3, 8) == h.guest_start + 24);
  CHECK_FALSE(t->phys_offset(p, (1 << 20) + 1).has_value());
  CHECK(t->map_phys(h.phys_bytes - 4096, 8192) == nullptr);
  t->unmap_phys(p);
  CHECK_FALSE(t->phys_offset(p, 8).has_value());
}

TEST_CASE("the uapi conformance suite passes over the transport") {
  daemon_fixture d;
  sim::testing::guest_layout layout = deep_ring_layout();
  auto first = d.connect();
  remote_guest g{first->phys_fd(), first->guest_start(), layout};
  remote_vmm a{d.connect(), g, layout};
  REQUIRE(a.cold_start(0));
  auto ctl = a.sys().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  REQUIRE(ctl);
  const auto checks = conformance::run(a.sys(), a.device_fd(), *ctl);
  CHECK(checks.size() >= 40);
  for (const auto& c : checks) {
    CAPTURE(c.name);
    CAPTURE(c.detail);
    CHECK(c.passed);
  }
  CHECK(abi::keepalive_status(a.sys(), a.device_fd())->state == abi::device_state::running);
}

TEST_CASE("a VMM streams over the transport: every packet verified, counters agree with the stats reply") {
  daemon_fixture d;
  sim::testing::guest_layout layout = deep_ring_layout();
  auto first = d.connect();
  remote_guest g{first->phys_fd(), first->guest_start(), layout};
  remote_vmm a{d.connect(), g, layout};
  REQUIRE(a.cold_start(test_rate_pps));
  g.start();
  CHECK(d.eventually([&] { return d.nic().packets > 5000; }));
  drain(d, g, a);
  const auto n = d.nic();
  CHECK(g.received == n.packets);
  CHECK(g.corrupted == 0);
  CHECK(g.lost_seqs == 0);
  CHECK(g.tail_write_failures == 0);
  CHECK(n.drops == 0);
  CHECK(d.iommu().dma_faults == 0);
  CHECK(d.iommu().ir_faults == 0);
  CHECK(d.iommu().irq_posted > 0);
  const auto posted_before = d.iommu().irq_posted;
  auto stats = first->stats_json();
  REQUIRE(stats);
  CHECK(json_value(*stats, "nics[0].packets") == n.packets);  // the wire is stopped
  // A last moderated interrupt may still be on its way: between the two snapshots.
  CHECK(json_value(*stats, "iommu.irq_posted") >= posted_before);
  CHECK(json_value(*stats, "iommu.irq_posted") <= d.iommu().irq_posted);
  CHECK(json_value(*stats, "kernel.irqfd_signals") > 0);
  CHECK(json_value(*stats, "kernel.spurious") == 0);
  CHECK(json_value(*stats, "connections") == 2);
  auto text = first->describe();
  REQUIRE(text);
  CHECK(text->find("0000:00:04.0  state running") != std::string::npos);
  CHECK(text->find("msix 0 posted") != std::string::npos);
}

TEST_CASE("stage 1 over the wire: the VMM's socket closes with nothing closed (SIGKILL), a new connection reclaims") {
  daemon_fixture d;
  sim::testing::guest_layout layout = deep_ring_layout();
  auto first = d.connect();
  remote_guest g{first->phys_fd(), first->guest_start(), layout};
  auto a = std::make_unique<remote_vmm>(d.connect(), g, layout);
  REQUIRE(a->cold_start(test_rate_pps));
  g.start();
  CHECK(d.eventually([&] { return g.received.load() > 1000; }));
  const auto resets_before = d.nic().resets;
  g.pause();
  auto e = a->enter_keepalive(tok);
  REQUIRE(e);
  CHECK(e->mode == abi::irq_mode::posted);
  CHECK(e->nr_vectors == 1);
  a->kill();
  a.reset();
  d.wait_for_connections(1);  // the daemon noticed the closed socket: the process exited
  control ctl{d};
  std::vector<abi::device_entry> rows;
  for (int i = 0; i < 200 && (rows = ctl.list()).empty(); ++i) d.run_for(2);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].device == nic0);
  CHECK(rows[0].state == abi::device_state::ownerless);
  CHECK(rows[0].mode == abi::irq_mode::posted);
  // The device keeps streaming into guest RAM; its interrupt waits in the descriptor.
  CHECK(d.eventually([&] { return ctl.list().at(0).nr_pending == 1; }));

  {
    remote_vmm wrong{d.connect(), g, layout};
    CHECK(wrong.reclaim(*token::parse("00000000-0000-4000-8000-000000000001")).code() == errc::access_denied);
  }
  d.wait_for_connections(2);
  remote_vmm c{d.connect(), g, layout};
  REQUIRE(c.reclaim(tok));
  CHECK(abi::keepalive_status(c.sys(), c.device_fd())->state == abi::device_state::running);
  g.resume();
  d.run_for(50);
  drain(d, g, c);
  CHECK(d.nic().resets == resets_before);
  CHECK(d.nic().drops == 0);
  CHECK(d.nic().dma_errors == 0);
  CHECK(g.received == d.nic().packets);
  CHECK(g.lost_seqs == 0);
  CHECK(g.corrupted == 0);
  CHECK(d.iommu().dma_faults == 0);
  CHECK(d.iommu().ir_faults == 0);
  auto stats = first->stats_json();
  REQUIRE(stats);
  CHECK(json_value(*stats, "kernel.preserved_drained") == 1);
  CHECK(json_value(*stats, "kernel.device_resets") == 1);  // only the first open
}

TEST_CASE("stage 2 over the wire: the kexec request drops every other connection, the device is reclaimed after") {
  daemon_fixture d;
  sim::testing::guest_layout layout = deep_ring_layout();
  auto first = d.connect();
  remote_guest g{first->phys_fd(), first->guest_start(), layout};
  {
    remote_vmm a{d.connect(), g, layout};
    REQUIRE(a.cold_start(test_rate_pps));
    g.start();
    CHECK(d.eventually([&] { return g.received.load() > 1000; }));
    g.pause();
    REQUIRE(a.enter_keepalive(tok));
    a.kill();
  }
  d.wait_for_connections(1);
  auto bystander = d.connect();
  auto bystander_ctl = bystander->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  REQUIRE(bystander_ctl);
  control ctl{d};
  std::vector<abi::device_entry> rows;
  for (int i = 0; i < 200 && (rows = ctl.list()).empty(); ++i) d.run_for(2);
  REQUIRE(rows.size() == 1);
  CHECK(d.eventually([&] { return ctl.list().at(0).nr_pending == 1; }));
  auto prep = abi::stage2_prepare(*ctl.t, ctl.fd);
  REQUIRE(prep);
  CHECK(prep->nr_devices == 1);
  const auto packets_before = d.nic().packets;

  REQUIRE(ctl.t->kexec());
  CHECK(d.eventually([&] { return d.nic().packets > packets_before; }));  // it never stopped
  // The requester is a new process: its old fd is gone.
  CHECK(abi::get_info(*ctl.t, ctl.fd).code() == errc::bad_fd);
  auto fd = ctl.t->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  REQUIRE(fd);
  ctl.fd = *fd;
  auto info = abi::get_info(*ctl.t, ctl.fd);
  REQUIRE(info);
  CHECK(info->generation == 1);
  rows = ctl.list();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].state == abi::device_state::restored);
  CHECK(rows[0].nr_vectors == 1);
  CHECK(rows[0].nr_pending == 1);
  // Every other connection was dropped: processes do not survive a kexec.
  CHECK(abi::get_info(*bystander, *bystander_ctl).code() == errc::io);
  CHECK(bystander->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR).code() == errc::io);
  CHECK(first->stats_json().code() == errc::io);

  remote_vmm c{d.connect(), g, layout};
  REQUIRE(c.reclaim(tok));
  g.resume();
  d.run_for(30);
  drain(d, g, c);
  CHECK(d.nic().resets == 1);
  CHECK(d.nic().drops == 0);
  CHECK(g.received == d.nic().packets);
  CHECK(g.lost_seqs == 0);
  CHECK(g.corrupted == 0);
  CHECK(d.iommu().dma_faults == 0);
  CHECK(d.iommu().ir_faults == 0);
  CHECK(d.iommu().irq_no_cpu == 0);
  auto stats = ctl.t->stats_json();
  REQUIRE(stats);
  CHECK(json_value(*stats, "kernel.generation") == 1);
  CHECK(json_value(*stats, "kernel.preserved_drained") == 1);
}

TEST_CASE("no posted interrupts over the wire: the VFIO eventfd travels by SCM_RIGHTS, masking keeps the interrupt") {
  daemon_fixture d{sim::kernel_mode::keepalive, false};
  sim::testing::guest_layout layout = deep_ring_layout();
  auto first = d.connect();
  CHECK_FALSE(first->host().posted_interrupts);
  remote_guest g{first->phys_fd(), first->guest_start(), layout};
  auto a = std::make_unique<remote_vmm>(d.connect(), g, layout);
  REQUIRE(a->cold_start(test_rate_pps));
  g.start();
  // Signalled by the daemon on the client's own eventfd.
  CHECK(d.eventually([&] { return g.interrupts.load() > 0 && g.received.load() > 1000; }));
  g.pause();
  CHECK(abi::keepalive_enter(a->sys(), a->device_fd(), tok).code() == errc::not_supported);
  auto e = abi::keepalive_enter(a->sys(), a->device_fd(), tok, {.allow_masking = true});
  REQUIRE(e);
  CHECK(e->mode == abi::irq_mode::masked);
  a->kill();
  a.reset();
  d.wait_for_connections(1);
  CHECK(d.eventually([&] { return d.nic().irqs_masked > 0; }));  // held in the PBA
  remote_vmm b{d.connect(), g, layout};
  REQUIRE(b.reclaim(tok));
  g.resume();
  d.run_for(30);
  drain(d, g, b);
  CHECK(g.received == d.nic().packets);
  CHECK(g.lost_seqs == 0);
  CHECK(d.nic().drops == 0);
  CHECK(d.iommu().ir_faults == 0);
}

TEST_CASE("the baseline host: hello says so, keepalive ioctls are ENOTTY, no control node") {
  daemon_fixture d{sim::kernel_mode::baseline};
  sim::testing::guest_layout layout = deep_ring_layout();
  auto first = d.connect();
  CHECK(first->host().baseline);
  remote_guest g{first->phys_fd(), first->guest_start(), layout};
  remote_vmm a{d.connect(), g, layout};
  REQUIRE(a.cold_start(0));
  CHECK(a.sys().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR).code() == errc::not_found);
  CHECK(abi::keepalive_status(a.sys(), a.device_fd()).code() == errc::not_tty);
}

TEST_CASE("marshalled fields: MAP_DMA vaddr, LIST entries, VFIO outputs") {
  daemon_fixture d;
  sim::testing::guest_layout layout = deep_ring_layout();
  auto first = d.connect();
  remote_guest g{first->phys_fd(), first->guest_start(), layout};
  remote_vmm a{d.connect(), g, layout};
  REQUIRE(a.cold_start(0));
  auto& s = a.sys();

  SUBCASE("a vaddr outside every map_phys() mapping goes unchanged: the kernel refuses it, the caller keeps it") {
    std::vector<std::byte> heap(8192);
    vfio_iommu_type1_dma_map map{};
    map.argsz = sizeof map;
    map.flags = VFIO_DMA_MAP_FLAG_READ;
    map.vaddr = reinterpret_cast<std::uintptr_t>(heap.data()) & ~std::uint64_t{4095};
    map.iova = 1ull << 30;
    map.size = 4096;
    // The VMM's container (fd 3) is type1 and has the device attached.
    CHECK(s.ioctl(3, VFIO_IOMMU_MAP_DMA, &map) == -EFAULT);
    CHECK(map.vaddr == (reinterpret_cast<std::uintptr_t>(heap.data()) & ~std::uint64_t{4095}));
    // The same page through the VMM's mapping of guest RAM works, and unmaps.
    auto* ram = static_cast<std::byte*>(s.map_phys(s.guest_start(), 1 << 20));
    REQUIRE(ram);
    map.vaddr = reinterpret_cast<std::uintptr_t>(ram + 8192);
    CHECK(s.ioctl(3, VFIO_IOMMU_MAP_DMA, &map) == 0);
    CHECK(map.vaddr == reinterpret_cast<std::uintptr_t>(ram + 8192));
    vfio_iommu_type1_dma_unmap un{};
    un.argsz = sizeof un;
    un.iova = 1ull << 30;
    un.size = 4096;
    CHECK(s.ioctl(3, VFIO_IOMMU_UNMAP_DMA, &un) == 0);
    CHECK(un.size == 4096);  // an output field, copied back
  }

  SUBCASE("VFIO struct outputs come back: region info, irq info, device info, API version") {
    vfio_region_info r{};
    r.argsz = sizeof r;
    r.index = VFIO_PCI_BAR0_REGION_INDEX;
    CHECK(s.ioctl(a.device_fd(), VFIO_DEVICE_GET_REGION_INFO, &r) == 0);
    CHECK(r.size == KA_NIC_BAR0_SIZE);
    CHECK(r.offset == std::uint64_t{VFIO_PCI_BAR0_REGION_INDEX} << 40);
    vfio_irq_info q{};
    q.argsz = sizeof q;
    q.index = VFIO_PCI_MSIX_IRQ_INDEX;
    CHECK(s.ioctl(a.device_fd(), VFIO_DEVICE_GET_IRQ_INFO, &q) == 0);
    CHECK(q.count == KA_NIC_MSIX_VECTORS);
    vfio_device_info di{};
    di.argsz = sizeof di;
    CHECK(s.ioctl(a.device_fd(), VFIO_DEVICE_GET_INFO, &di) == 0);
    CHECK(di.num_regions == VFIO_PCI_NUM_REGIONS);
    CHECK(s.ioctl(3, VFIO_GET_API_VERSION, nullptr) == VFIO_API_VERSION);
    CHECK(s.ioctl(3, VFIO_CHECK_EXTENSION, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU})) == 1);
    CHECK(s.ioctl(3, VFIO_CHECK_EXTENSION, reinterpret_cast<void*>(std::uintptr_t{12345})) == 0);
    vfio_group_status gs{};
    gs.argsz = sizeof gs;
    CHECK(s.ioctl(4, VFIO_GROUP_GET_STATUS, &gs) == 0);
    CHECK(gs.flags == (VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET));
    CHECK(s.ioctl(3, 0x1234, nullptr) == -ENOTTY);  // not a command of the sim host
  }

  SUBCASE("LIST_DEVICES: EOVERFLOW gives the count, rows land in the caller's array, entries_uptr is untouched") {
    REQUIRE(a.enter_keepalive(tok));
    auto ctl = s.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
    REQUIRE(ctl);
    auto req = abi::make_request<vfio_keepalive_list>();
    CHECK(s.ioctl(*ctl, VFIO_KEEPALIVE_LIST_DEVICES, &req) == -EOVERFLOW);
    CHECK(req.nr_entries == 1);
    CHECK(req.entries_uptr == 0);
    vfio_keepalive_device_entry rows[3];
    std::memset(rows, 0xab, sizeof rows);
    req.nr_entries = 3;
    req.entries_uptr = reinterpret_cast<std::uintptr_t>(rows);
    CHECK(s.ioctl(*ctl, VFIO_KEEPALIVE_LIST_DEVICES, &req) == 0);
    CHECK(req.nr_entries == 1);
    CHECK(req.entries_uptr == reinterpret_cast<std::uintptr_t>(rows));
    CHECK(rows[0].bdf == nic0.packed());
    CHECK(rows[0].state == VFIO_KEEPALIVE_STATE_KEPT_ALIVE);
    CHECK(rows[0].irq_mode == VFIO_KEEPALIVE_IRQ_POSTED);
    CHECK(rows[0].nr_vectors == 1);
    CHECK(rows[1].bdf == 0xababababu);  // nothing written past the count
    // A null array with a device to report: EFAULT, as the kernel says.
    req.entries_uptr = 0;
    CHECK(s.ioctl(*ctl, VFIO_KEEPALIVE_LIST_DEVICES, &req) == -EFAULT);
    // A huge capacity is not a huge allocation.
    req.nr_entries = 0xffffffffu;
    req.entries_uptr = reinterpret_cast<std::uintptr_t>(rows);
    CHECK(s.ioctl(*ctl, VFIO_KEEPALIVE_LIST_DEVICES, &req) == 0);
    CHECK(req.nr_entries == 1);
    REQUIRE(a.leave_keepalive(tok));
  }

  SUBCASE("SET_IRQS: one eventfd shared by two vectors travels once; -1 disables; the caller's array is restored") {
    const int e1 = ::eventfd(0, EFD_CLOEXEC), e2 = ::eventfd(0, EFD_CLOEXEC);
    alignas(8) std::byte buf[sizeof(vfio_irq_set) + 3 * sizeof(std::int32_t)]{};
    auto* set = reinterpret_cast<vfio_irq_set*>(buf);
    set->argsz = sizeof buf;
    set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    set->index = VFIO_PCI_MSIX_IRQ_INDEX;
    set->start = 1;
    set->count = 3;
    const std::int32_t fds[3] = {e1, e2, e1};
    std::memcpy(buf + sizeof(vfio_irq_set), fds, sizeof fds);
    CHECK(s.ioctl(a.device_fd(), VFIO_DEVICE_SET_IRQS, set) == 0);
    std::int32_t back[3];
    std::memcpy(back, buf + sizeof(vfio_irq_set), sizeof back);
    CHECK(back[0] == e1);
    CHECK(back[1] == e2);
    CHECK(back[2] == e1);
    auto text = first->describe();
    REQUIRE(text);
    CHECK(text->find("msix 1 remapped") != std::string::npos);
    CHECK(text->find("msix 3 remapped") != std::string::npos);
    const std::int32_t off[3] = {-1, -1, -1};
    std::memcpy(buf + sizeof(vfio_irq_set), off, sizeof off);
    CHECK(s.ioctl(a.device_fd(), VFIO_DEVICE_SET_IRQS, set) == 0);
    text = first->describe();
    REQUIRE(text);
    CHECK(text->find("msix 1 ") == std::string::npos);
    ::close(e1);
    ::close(e2);
  }
}
