// keepalivectl (the built binary) against a daemon: its output is what the
// kernel says through the library calls, and its errors are one line.
#include <fcntl.h>
#include <linux/vfio_keepalive.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include <fmt/format.h>

#include "fixture.hpp"
#include "handover.hpp"
#include "keepalive/detail/json.hpp"
#include "keepalive/snapshot.hpp"
#include "keepalive_handover.h"

// KEEPALIVECTL_BIN is set by tools/keepalivectl/CMakeLists.txt (built with KEEPALIVE_BUILD_EXAMPLES).
#ifdef KEEPALIVECTL_BIN

using namespace keepalive;
using namespace keepalive::transport_test;

namespace {
const token tok = *token::parse("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d");

run_result keepalivectl(const daemon_fixture& d, std::vector<std::string> args) {
  std::vector<std::string> argv{KEEPALIVECTL_BIN, "--socket", d.socket};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv);
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in{s};
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}
std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in{s};
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}
std::string value_of(const detail::json::rows& rows, const std::string& key) {
  for (const auto& [k, v] : rows)
    if (k == key) return v;
  return "<missing " + key + ">";
}

// A VMM that streamed, entered keepalive and died: one OWNERLESS device.
struct host_with_ownerless_device {
  host_with_ownerless_device() : first{d.connect()}, g{first->phys_fd(), first->guest_start(), layout} {
    remote_vmm a{d.connect(), g, layout};
    REQUIRE(a.cold_start(test_rate_pps));
    g.start();
    CHECK(d.eventually([&] { return g.received.load() > 500; }));
    g.pause();
    REQUIRE(a.enter_keepalive(tok));
    a.kill();
    d.wait_for_connections(1);
    // Settled: an interrupt is pending in the parked descriptor (it stays so).
    auto ctlfd = first->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
    REQUIRE(ctlfd);
    CHECK(d.eventually([&] {
      auto rows = abi::list_devices(*first, *ctlfd);
      return rows && rows->size() == 1 && (*rows)[0].nr_pending == 1;
    }));
    REQUIRE(first->close(*ctlfd) == errc::ok);
  }
  daemon_fixture d;
  sim::testing::guest_layout layout = deep_ring_layout();
  std::unique_ptr<sim_transport> first;
  remote_guest g;
};

std::string temp_file(const daemon_fixture& d, const char* name) { return d.dir + "/" + name; }
}  // namespace

TEST_CASE("keepalivectl status: version, decoded caps, generation and --json") {
  daemon_fixture d;
  auto r = keepalivectl(d, {"status"});
  CAPTURE(r.err);
  REQUIRE(r.exit_code == 0);
  const auto l = lines(r.out);
  REQUIRE(l.size() >= 4);
  CHECK(l[0] == "abi version   1");
  CHECK(l[1] == "capabilities  0xf posted-interrupts msi-masking stage2 events");
  CHECK(l[2] == "devices       0 in keepalive");
  CHECK(l[3] == "generation    0");
  CHECK(r.out.find("functions     0000:00:04.0") != std::string::npos);

  auto j = keepalivectl(d, {"--json", "status"});
  REQUIRE(j.exit_code == 0);
  auto rows = detail::json::parse(j.out);
  REQUIRE(rows);
  CHECK(value_of(*rows, "version") == "1");
  CHECK(value_of(*rows, "caps") == "15");
  CHECK(value_of(*rows, "capabilities[2]") == "stage2");
  CHECK(value_of(*rows, "generation") == "0");

  daemon_fixture nopost{sim::kernel_mode::keepalive, false};
  auto n = keepalivectl(nopost, {"status"});
  REQUIRE(n.exit_code == 0);
  CHECK(lines(n.out)[1] == "capabilities  0xe msi-masking stage2 events");
}

TEST_CASE("keepalivectl list: the table matches LIST_DEVICES and --json") {
  host_with_ownerless_device h;
  auto t = h.d.connect();
  auto ctlfd = t->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  REQUIRE(ctlfd);
  auto expect = abi::list_devices(*t, *ctlfd);
  REQUIRE(expect);
  REQUIRE(expect->size() == 1);
  const auto& e = (*expect)[0];

  auto r = keepalivectl(h.d, {"list"});
  CAPTURE(r.err);
  REQUIRE(r.exit_code == 0);
  const auto l = lines(r.out);
  REQUIRE(l.size() == 2);
  CHECK(words(l[0]) == std::vector<std::string>{"BDF", "STATE", "IRQ", "VECTORS", "PENDING", "DID"});
  CHECK(words(l[1]) == std::vector<std::string>{"0000:00:04.0", "ownerless", "posted", "1",
                                                std::to_string(e.nr_pending), std::to_string(e.domain.value())});
  CHECK(e.domain.value() != 0);

  auto j = keepalivectl(h.d, {"list", "--json"});
  REQUIRE(j.exit_code == 0);
  auto rows = detail::json::parse(j.out);
  REQUIRE(rows);
  CHECK(value_of(*rows, "[0].bdf") == "0000:00:04.0");
  CHECK(value_of(*rows, "[0].state") == "ownerless");
  CHECK(value_of(*rows, "[0].irq_mode") == "posted");
  CHECK(value_of(*rows, "[0].nr_vectors") == "1");
  CHECK(value_of(*rows, "[0].domain_id") == std::to_string(e.domain.value()));

  auto s = keepalivectl(h.d, {"status"});
  CHECK(lines(s.out)[2] == "devices       1 in keepalive");
}

TEST_CASE("keepalivectl prepare, dump-handover, decode-handover: every record of the image") {
  host_with_ownerless_device h;
  auto p = keepalivectl(h.d, {"dump-handover", temp_file(h.d, "none.img")});
  CHECK(p.exit_code == 1);
  CHECK(p.err == "keepalivectl: dump-handover: no handover image (stage 2 not prepared): ENOENT (no such device or not in keepalive)\n");

  p = keepalivectl(h.d, {"prepare"});
  CAPTURE(p.err);
  REQUIRE(p.exit_code == 0);
  CHECK(p.out.starts_with("prepared: 1 device(s) frozen, handover image "));
  const auto file = temp_file(h.d, "image.bin");
  auto dump = keepalivectl(h.d, {"dump-handover", file});
  REQUIRE(dump.exit_code == 0);

  // The file is the image in physical memory, byte for byte.
  std::ifstream in{file, std::ios::binary};
  const std::vector<char> raw{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  REQUIRE(raw.size() > sizeof(keepalive_handover_hdr_ser));
  const auto* phys = h.d.srv->hardware().memory().base() + h.first->host().handover_start;
  CHECK(std::memcmp(raw.data(), phys, raw.size()) == 0);
  CHECK(dump.out == "wrote " + std::to_string(raw.size()) + " bytes to " + file + "\n");
  auto img = handover::decode(std::as_bytes(std::span{raw}));
  REQUIRE(img);
  REQUIRE(img->devices.size() == 1);
  const auto& dev = img->devices[0];
  REQUIRE(dev.vectors.size() == 1);

  auto dec = run_program({KEEPALIVECTL_BIN, "decode-handover", file});
  CAPTURE(dec.err);
  CAPTURE(dec.out);
  REQUIRE(dec.exit_code == 0);
  const auto l = lines(dec.out);
  CHECK(l[0] == fmt::format("handover image {}: {} bytes, generation 0, next event seq {}", file, raw.size(), img->event_seq));
  CHECK(dec.out.find(fmt::format("pid area {:#x}, {} descriptor(s)", img->iommu.pid_area.value(), img->iommu.nr_pids)) !=
        std::string::npos);
  CHECK(dec.out.find(fmt::format("ranges: {}\n", img->ranges.size())) != std::string::npos);
  for (const auto& rg : img->ranges)
    CHECK(dec.out.find(fmt::format("  [{:#x}, +{:#x})\n", rg.start.value(), rg.bytes)) != std::string::npos);
  CHECK(dec.out.find("devices: 1\n") != std::string::npos);
  CHECK(dec.out.find(fmt::format("  0000:00:04.0  state frozen  token {}  domain {}  levels 4  irq posted  sl_root {:#x}",
                                 tok.to_string(), dev.did.value(), dev.sl_root.value())) != std::string::npos);
  CHECK(dec.out.find(fmt::format("    bar0 {:#x} size {:#x}", dev.bar[0], dev.bar_size[0])) != std::string::npos);
  CHECK(dec.out.find(fmt::format("    vector msix 0 irte {} posted guest vector 0x40 pid {:#x}", dev.vectors[0].irte.value(),
                                 dev.vectors[0].pid.value())) != std::string::npos);

  // A corrupted image is refused with the reason.
  auto bad = raw;
  bad[bad.size() - 1] ^= 1;
  const auto badfile = temp_file(h.d, "bad.bin");
  std::ofstream{badfile, std::ios::binary}.write(bad.data(), static_cast<std::streamsize>(bad.size()));
  auto refused = run_program({KEEPALIVECTL_BIN, "decode-handover", badfile});
  CHECK(refused.exit_code == 1);
  CHECK(refused.out.empty());
  CHECK(refused.err.starts_with("keepalivectl: decode-handover " + badfile + ": "));
  CHECK(refused.err.ends_with(": EPROTO (handover image corrupt, truncated or of unknown version)\n"));
  CHECK(lines(refused.err).size() == 1);

  auto ab = keepalivectl(h.d, {"abort"});
  CHECK(ab.exit_code == 0);
  CHECK(ab.out == "aborted: 1 device(s) thawed\n");
}

TEST_CASE("keepalivectl kexec: new generation, restored devices, and a corrupted image shows up as an event") {
  host_with_ownerless_device h;
  auto k = keepalivectl(h.d, {"kexec"});
  CAPTURE(k.err);
  REQUIRE(k.exit_code == 0);
  auto l = lines(k.out);
  REQUIRE(l.size() == 4);
  CHECK(l[0].starts_with("prepared: 1 device(s) frozen"));
  CHECK(l[1] == "kexec done: generation 1");
  CHECK(words(l[3])[0] == "0000:00:04.0");
  CHECK(words(l[3])[1] == "restored");

  // Prepared by hand, then the image is damaged before the kexec: refused whole.
  auto p = keepalivectl(h.d, {"prepare"});
  REQUIRE(p.exit_code == 0);
  auto t = h.d.connect();
  auto* area = static_cast<std::byte*>(t->map_phys(t->host().handover_start, t->host().handover_bytes));
  REQUIRE(area);
  area[sizeof(keepalive_handover_hdr_ser) + 40] ^= std::byte{0x10};
  k = keepalivectl(h.d, {"kexec"});
  CAPTURE(k.err);
  REQUIRE(k.exit_code == 0);
  l = lines(k.out);
  REQUIRE(l.size() >= 5);
  CHECK(l[0] == "prepared already");
  {
    // What the new kernel reports (a refused image carries nothing over).
    auto now = h.d.connect();
    auto fd = now->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
    REQUIRE(fd);
    auto info = abi::get_info(*now, *fd);
    REQUIRE(info);
    CHECK(l[1] == fmt::format("kexec done: generation {}", info->generation));
  }
  CHECK(words(l[3])[1] == "error");
  bool rejected = false;
  for (const auto& line : l)
    rejected = rejected || (line.find("HANDOVER_REJECTED  0000:00:04.0  errno EPROTO") != std::string::npos);
  CHECK(rejected);

  // The operator's way out.
  auto r = keepalivectl(h.d, {"reset", "00:04.0"});
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out == "reset 0000:00:04.0: running\n");
  auto again = keepalivectl(h.d, {"reset", "0000:00:04.0"});
  CHECK(again.exit_code == 1);
  CHECK(again.err ==
        "keepalivectl: reset: VFIO_KEEPALIVE_RESET_DEVICE 0000:00:04.0: EBUSY (not a legal transition from the current "
        "state)\n");
  auto ev = keepalivectl(h.d, {"events"});
  CHECK(ev.exit_code == 0);
  CHECK(ev.out.find("RESET  0000:00:04.0") != std::string::npos);
  CHECK(keepalivectl(h.d, {"events"}).out.empty());  // drained
}

TEST_CASE("keepalivectl stats and describe") {
  host_with_ownerless_device h;
  auto s = keepalivectl(h.d, {"stats"});
  CAPTURE(s.err);
  REQUIRE(s.exit_code == 0);
  const auto packets = h.d.nic().packets;
  bool found_bdf = false, found_gen = false;
  for (const auto& line : lines(s.out)) {
    const auto w = words(line);
    REQUIRE(w.size() == 2);
    found_bdf = found_bdf || (w[0] == "nics[0].bdf" && w[1] == "0000:00:04.0");
    found_gen = found_gen || (w[0] == "kernel.generation" && w[1] == "0");
    if (w[0] == "nics[0].packets") CHECK(std::stoull(w[1]) <= packets);
  }
  CHECK(found_bdf);
  CHECK(found_gen);
  auto j = keepalivectl(h.d, {"stats", "--json"});
  REQUIRE(j.exit_code == 0);
  auto rows = detail::json::parse(j.out);
  REQUIRE(rows);
  CHECK(value_of(*rows, "kernel.device_resets") == "1");
  CHECK(std::stoull(value_of(*rows, "iommu.irq_posted")) > 0);

  auto d = keepalivectl(h.d, {"describe"});
  CAPTURE(d.out);
  REQUIRE(d.exit_code == 0);
  CHECK(d.out.find("0000:00:04.0  state ownerless") != std::string::npos);
  CHECK(d.out.find("msix 0 preserved") != std::string::npos);
  CHECK(d.out.find("SN true") != std::string::npos);  // the parked descriptor suppresses notifications
}

TEST_CASE("keepalivectl errors: one line, exit status 1") {
  daemon_fixture d;
  auto nohost = run_program({KEEPALIVECTL_BIN, "--socket", d.dir + "/nothing.sock", "status"});
  CHECK(nohost.exit_code == 1);
  CHECK(nohost.err == "keepalivectl: keepalive-simd: connect " + d.dir +
                          "/nothing.sock: ENOENT (no such device or not in keepalive)\n");
  auto unknown = keepalivectl(d, {"frobnicate"});
  CHECK(unknown.exit_code == 1);
  CHECK(unknown.err.starts_with("keepalivectl: unknown command 'frobnicate': EINVAL (malformed request)\n"));
  auto badbdf = keepalivectl(d, {"reset", "zz"});
  CHECK(badbdf.exit_code == 1);
  CHECK(badbdf.err.starts_with("keepalivectl: reset: not a BDF: 'zz': EINVAL"));
  auto running = keepalivectl(d, {"reset", "00:04.0"});
  CHECK(running.exit_code == 1);
  CHECK(running.err ==
        "keepalivectl: reset: VFIO_KEEPALIVE_RESET_DEVICE 0000:00:04.0: EBUSY (not a legal transition from the current "
        "state)\n");
  auto missing = run_program({KEEPALIVECTL_BIN, "decode-handover", d.dir + "/absent.bin"});
  CHECK(missing.exit_code == 1);
  CHECK(missing.err == "keepalivectl: decode-handover: open " + d.dir +
                           "/absent.bin: ENOENT (no such device or not in keepalive)\n");
  auto abort = keepalivectl(d, {"abort"});
  CHECK(abort.exit_code == 1);
  CHECK(abort.err == "keepalivectl: abort: VFIO_KEEPALIVE_STAGE2_ABORT: EBUSY (not a legal transition from the current state)\n");
  auto noargs = run_program({KEEPALIVECTL_BIN});
  CHECK(noargs.exit_code == 1);
  auto help = run_program({KEEPALIVECTL_BIN, "--help"});
  CHECK(help.exit_code == 0);
  CHECK(help.out.starts_with("usage: keepalivectl"));
}


TEST_CASE("keepalivectl decode-snapshot prints a VMM snapshot and refuses a corrupted one") {
  snapshot snap;
  snap.owner = tok;
  snap.nr_vcpus = 1;
  snapshot_device dev;
  dev.address = bdf{0, 0, 4, 0};
  dev.group = 4;
  dev.mode = abi::irq_mode::posted;
  dev.vectors.push_back({msix_index{0}, vector{0x40}, 0});
  snap.devices.push_back(dev);
  snap.ram.push_back({gpa{0}, iova{0}, 16ull << 20, 0x4000000, "keepalive-phys", 0x4000000});
  snap.vcpu_state.push_back({0, vcpu_state_tag::regs, std::vector<std::byte>(144, std::byte{7})});
  auto encoded = encode_snapshot(snap);
  REQUIRE(encoded);
  const auto& bytes = *encoded;
  const std::string path = "/tmp/keepalivectl-snapshot-" + std::to_string(::getpid());
  {
    std::ofstream out{path, std::ios::binary};
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  daemon_fixture d;
  auto r = keepalivectl(d, {"decode-snapshot", path});
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("keepalive-snapshot-v1") != std::string::npos);
  CHECK(r.out.find(tok.to_string()) != std::string::npos);
  CHECK(r.out.find("0000:00:04.0") != std::string::npos);
  CHECK(r.out.find("msix 0 -> guest vector 0x40 on vcpu 0") != std::string::npos);
  {
    std::fstream f{path, std::ios::binary | std::ios::in | std::ios::out};
    f.seekp(static_cast<std::streamoff>(bytes.size() - 1));
    f.put(static_cast<char>(static_cast<unsigned char>(bytes.back()) ^ 1u));
  }
  auto bad = keepalivectl(d, {"decode-snapshot", path});
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("EPROTO") != std::string::npos);
  std::remove(path.c_str());
}

#endif  // KEEPALIVECTL_BIN
