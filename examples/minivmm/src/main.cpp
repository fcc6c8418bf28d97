// minivmm: boots the freestanding guest under KVM with the sim NIC passed
// through, streams packets at a wire rate, optionally restarts the VMM (keeping
// the device alive) and reports what the guest verified.
//
//   minivmm (--inproc | --daemon SOCKET) [--rate PPS] [--seconds S] [--restarts N]
//           [--find-rate] [--payload N] [--ring N] [--mod-pkts N] [--mod-usec N]
//           [--verify tables|reference] [--pause-burst N] [--check] [--quiet]
//           [--handover-to PATH | --take-over PATH]
// --inproc runs the sim host in this process; --daemon connects to
// keepalive-simd, so two minivmm processes can restart into each other:
//   minivmm --daemon S --take-over F &   (prepares its VM, then waits for F)
//   minivmm --daemon S --handover-to F   (boots, streams, hands over to F, exits)
// --qmp PATH serves the control socket until quit (serve.hpp): with
// [--ram-mib N] [--keepalive-token UUID] [--x-ignore-shared]
// [--incoming PATH | --incoming-fd N (exec) | --reclaim-reboot UUID] [--qmp-fd N (exec)].
// --qmp-call PATH JSON: one request as a client, the reply on stdout.
// Exit: 0 ok, 1 the run was not clean (with --check), 2 usage or setup error,
// 77 KVM unavailable (CTest SKIP_RETURN_CODE).
#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "harness.hpp"
#include "inproc_host.hpp"
#include "qmp.hpp"
#include "serve.hpp"
#if MINIVMM_WITH_DAEMON
#include "daemon_link.hpp"
#endif

using namespace keepalive;
using namespace keepalive::minivmm;

namespace {

constexpr int exit_unclean = 1, exit_usage = 2, exit_skip = 77;

struct cli {
  bool inproc = false, find_rate = false, check = false, quiet = false;
  bool baseline = false;  // inproc host with an unpatched kernel: every restart must be refused, the guest runs on
  std::string daemon, handover_to, take_over;
  serve_config serve;  // --qmp mode
  std::uint64_t pause_burst = 0;  // packets sent while the device is ownerless (restart drain check)
  std::uint64_t rate = 4000;
  double seconds = 1.5;
  unsigned restarts = 0;
  vmm_options vm;
};

template <typename T>
bool parse_num(std::string_view s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}

bool parse(int argc, char** argv, cli& c) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&](auto& out) {
      if (i + 1 >= argc) return false;
      return parse_num(std::string_view{argv[++i]}, out);
    };
    if (a == "--inproc") c.inproc = true;
    else if (a == "--find-rate") c.find_rate = true;
    else if (a == "--check") c.check = true;
    else if (a == "--quiet") c.quiet = true;
    else if (a == "--baseline") c.baseline = true;
    else if (a == "--rate") { if (!value(c.rate)) return false; }
    else if (a == "--seconds") {
      if (i + 1 >= argc) return false;
      c.seconds = std::strtod(argv[++i], nullptr);
      if (!(c.seconds > 0)) return false;
    }
    else if (a == "--restarts") { if (!value(c.restarts)) return false; }
    else if (a == "--pause-burst") { if (!value(c.pause_burst)) return false; }
    else if (a == "--daemon" || a == "--handover-to" || a == "--take-over") {
      if (i + 1 >= argc) return false;
      (a == "--daemon" ? c.daemon : a == "--handover-to" ? c.handover_to : c.take_over) = argv[++i];
    }
    else if (a == "--qmp" || a == "--incoming") {
      if (i + 1 >= argc) return false;
      (a == "--qmp" ? c.serve.qmp_path : c.serve.incoming_path) = argv[++i];
    }
    else if (a == "--qmp-fd") { if (!value(c.serve.qmp_fd)) return false; }
    else if (a == "--incoming-fd") { if (!value(c.serve.incoming_fd)) return false; }
    else if (a == "--x-ignore-shared") c.serve.ignore_shared = true;
    else if (a == "--keepalive-token" || a == "--reclaim-reboot") {
      if (i + 1 >= argc) return false;
      auto t = token::parse(argv[++i]);
      if (!t || t->is_nil()) return false;
      (a == "--keepalive-token" ? c.serve.arm : c.serve.reboot) = *t;
    }
    else if (a == "--ram-mib") {
      std::uint64_t mib = 0;
      if (!value(mib)) return false;
      // Up to 3 GiB below the BAR0 window, the rest above 4 GiB.
      if (mib < 16) return false;
      const std::uint64_t low = std::min<std::uint64_t>(mib, 3072);
      c.vm.guest.ram_bytes = low << 20;
      c.vm.high_ram_bytes = (mib - low) << 20;
    }
    else if (a == "--payload") { if (!value(c.vm.guest.payload_bytes)) return false; }
    else if (a == "--ring") { if (!value(c.vm.guest.ring_entries)) return false; }
    else if (a == "--mod-pkts") { if (!value(c.vm.guest.irq_mod_pkts)) return false; }
    else if (a == "--mod-usec") { if (!value(c.vm.guest.irq_mod_usec)) return false; }
    else if (a == "--verify") {
      if (i + 1 >= argc) return false;
      const std::string_view m = argv[++i];
      if (m == "tables") c.vm.guest.verify = MINIVMM_VERIFY_TABLES;
      else if (m == "reference") c.vm.guest.verify = MINIVMM_VERIFY_REFERENCE;
      else return false;
    }
    else return false;
  }
  return true;
}

double us(std::uint64_t ns) { return static_cast<double>(ns) / 1e3; }

void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>{s}); }

void print_guest_profile(const minivmm_counters& c, std::uint32_t khz, std::uint64_t image_bytes) {
  const double calib_us = tsc_to_us(c.calib_tsc, khz);
  const double ips = calib_us > 0 ? static_cast<double>(c.calib_instructions) / calib_us * 1e6 : 0;
  fmt::print("guest: image {} bytes; emulation {:.2f} M instructions/s (calibration loop)\n", image_bytes, ips / 1e6);
  if (c.received == 0) return;
  const double us_per_pkt = tsc_to_us(c.busy_tsc, khz) / static_cast<double>(c.received);
  fmt::print("guest: {:.2f} us per packet in the handler (~{:.0f} instruction-equivalents incl. the TAIL MMIO exit "
             "per batch of {:.1f}), {:.2f} packets per interrupt\n",
             us_per_pkt, us_per_pkt * ips / 1e6,
             static_cast<double>(c.received) / static_cast<double>(c.batches ? c.batches : 1),
             static_cast<double>(c.received) / static_cast<double>(c.interrupts ? c.interrupts : 1));
}

// The link partner sends `packets` and stops (the NIC's wire registers, as the
// sim host's tests drive them): used while no VMM owns the device.
void wire_burst(inproc_host& h, std::uint64_t packets) {
  auto* n = h.platform().find_nic(inproc_host::nic0());
  const std::uint64_t start = n->stats().next_seq;
  constexpr std::uint64_t burst_pps = 50'000;
  n->mmio_write(0, KA_NIC_RATE_PPS, 8, burst_pps);
  while (n->stats().next_seq - start < packets) std::this_thread::sleep_for(std::chrono::microseconds{100});
  n->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds{2});  // the moderation timer fires: posted, not delivered
}

struct trial {
  bool pass = false;
  run_report at_end;
};

// One rate trial on a running guest: drain, run `secs`, judge, drain.
result<trial> try_rate(vmm& v, std::uint64_t rate, double secs, std::uint32_t ring) {
  auto d = drain(v, 3000);
  if (!d) return d.err();
  auto before = report_now(v);
  if (!before) return before.err();
  if (auto st = v.set_rate(rate); !st) return st.err();
  sleep_s(secs);
  auto after = report_now(v);
  if (!after) return after.err();
  auto drained = drain(v, 3000);
  if (!drained) return drained.err();
  trial t;
  t.at_end = *after;
  const auto& b = before->guest;
  const auto& a = after->guest;
  t.pass = *drained && a.lost == b.lost && a.corrupted == b.corrupted && a.gaps == b.gaps && a.reordered == b.reordered &&
           after->nic.drops == before->nic.drops && after->backlog <= ring / 8 && a.state == MINIVMM_STATE_RUNNING;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string_view{argv[1]} == "--qmp-call") {
    // Client: one request, the reply line on stdout; exit 1 on {"error":...}.
    auto r = qmp_call(argv[2], argv[3], 120'000);
    if (!r) {
      fmt::print(stderr, "minivmm: qmp {}: {}\n", argv[2], r.err().message());
      return exit_usage;
    }
    fmt::print("{}\n", *r);
    return r->rfind("{\"return\"", 0) == 0 ? 0 : exit_unclean;
  }
  cli c;
  const bool parsed = parse(argc, argv, c);
  const bool cross = !c.handover_to.empty() || !c.take_over.empty();
  const bool qmp = !c.serve.qmp_path.empty();
  const bool qmp_only = c.serve.qmp_fd >= 0 || !c.serve.incoming_path.empty() || c.serve.incoming_fd >= 0 ||
                        c.serve.arm || c.serve.reboot || c.serve.ignore_shared;
  const bool serve_ok = qmp ? !(cross || c.find_rate || c.restarts > 0 || c.pause_burst > 0 || c.baseline) &&
                                  !(c.serve.reboot && (!c.serve.incoming_path.empty() || c.serve.incoming_fd >= 0))
                            : !qmp_only;
  const bool valid = parsed && c.inproc != !c.daemon.empty() && !(!c.handover_to.empty() && !c.take_over.empty()) &&
                     !((c.pause_burst > 0 || c.baseline) && !c.inproc) && !(cross && c.inproc) && !(c.find_rate && cross) && serve_ok;
  if (!valid) {
    fmt::print(stderr,
               "usage: minivmm (--inproc | --daemon SOCKET) [--rate PPS] [--seconds S] [--restarts N] [--find-rate]\n"
               "               [--payload N] [--ring N] [--mod-pkts N] [--mod-usec N] [--verify tables|reference]\n"
               "               [--pause-burst N | --baseline (inproc)] [--handover-to PATH | --take-over PATH (daemon)]\n"
               "               [--check] [--quiet]\n"
               "       minivmm (--daemon SOCKET | --inproc) --qmp PATH [--rate PPS] [--ram-mib N] [--keepalive-token UUID]\n"
               "               [--x-ignore-shared] [--incoming PATH | --reclaim-reboot UUID]\n"
               "       minivmm --qmp-call PATH JSON\n");
    return exit_usage;
  }
#if !MINIVMM_WITH_DAEMON
  if (!c.daemon.empty()) {
    fmt::print(stderr, "minivmm: built without the sim transport (include/keepalive/sim_transport.hpp)\n");
    return exit_usage;
  }
#endif
  c.vm.echo_guest_console = !c.quiet;
  if (int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC); fd < 0) {
    fmt::print("minivmm: SKIP: cannot open /dev/kvm: {}\n", std::strerror(errno));
    return exit_skip;
  } else {
    ::close(fd);
  }

  std::unique_ptr<inproc_host> host;
  connector connect;
  c.vm.nic = inproc_host::nic0();
  if (c.inproc) {
    inproc_config hc;
    hc.guest_area_bytes = c.vm.guest.ram_bytes + c.vm.high_ram_bytes;
    hc.baseline = c.baseline;
    auto h = inproc_host::create(hc);
    if (!h) {
      fmt::print(stderr, "minivmm: sim host: {}\n", h.err().message());
      return exit_usage;
    }
    host = std::move(*h);
    connect = [&](const std::string& name) { return host->connect(name); };
  } else {
#if MINIVMM_WITH_DAEMON
    connect = [&](const std::string&) -> std::unique_ptr<host_link> {
      auto l = connect_daemon(c.daemon);
      if (!l) {
        fmt::print(stderr, "minivmm: daemon {}: {}\n", c.daemon, l.err().message());
        return nullptr;
      }
      return std::move(*l);
    };
#endif
  }
  const auto image = builtin_guest_image();

  auto first = vmm::prepare(connect("vmm-0"), c.vm);
  if (!first) {
    fmt::print(stderr, "minivmm: prepare: {}\n", first.err().message());
    return exit_usage;
  }
  std::unique_ptr<vmm> v = std::move(*first);
  if (qmp) {
    c.serve.rate = c.rate;
    c.serve.can_exec = !c.daemon.empty();
    c.serve.argv.assign(argv, argv + argc);
    return serve(std::move(v), c.serve, image);
  }
  if (!c.take_over.empty()) {
    // The other VMM process runs the guest; this one is prepared and waits
    // for its state (a FIFO blocks here until the old VMM writes it).
    fmt::print("minivmm: prepared (VM, RAM slot, vCPU, irqfd) in {:.0f} us; waiting for {}\n",
               us(v->timing().prepare_ns), c.take_over);
    std::fflush(stdout);
    const int fd = ::open(c.take_over.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      fmt::print(stderr, "minivmm: open {}: {}\n", c.take_over, std::strerror(errno));
      return exit_usage;
    }
    auto state = read_snapshot(fd);
    ::close(fd);
    if (!state) {
      fmt::print(stderr, "minivmm: {}\n", state.err().message());
      return exit_unclean;
    }
    if (auto st = v->take_over(std::move(*state)); !st) {
      fmt::print(stderr, "minivmm: take over: {}\n", st.err().message());
      return exit_unclean;
    }
    auto t = v->timing();
    measure_resume_gap(*v, t);
    fmt::print("minivmm: took over from another process: pause {:.0f} us (restore {:.0f}, reclaim {:.0f}); guest: "
               "interrupt gap across the restart {:.0f} us\n",
               us(t.pause_ns), us(t.restore_ns), us(t.reclaim_ns), tsc_to_us(t.guest_gap_tsc, v->tsc_khz()));
  } else {
    if (auto st = v->boot(image); !st) {
      fmt::print(stderr, "minivmm: boot: {}\n", st.err().message());
      return exit_usage;
    }
    if (auto st = wait_guest_running(*v, 20000); !st) {
      fmt::print(stderr, "minivmm: {}\n", st.err().message());
      return exit_unclean;
    }
  }
  fmt::print("minivmm: guest running (TSC {} kHz), payload {} B, ring {}, moderation {} pkts / {} us, verify {}\n",
             v->tsc_khz(), c.vm.guest.payload_bytes, c.vm.guest.ring_entries, c.vm.guest.irq_mod_pkts,
             c.vm.guest.irq_mod_usec, c.vm.guest.verify == MINIVMM_VERIFY_TABLES ? "tables" : "reference");

  if (c.find_rate) {
    std::uint64_t good = 0, bad = 0, rate = c.rate;
    while (bad == 0 || bad - good > std::max<std::uint64_t>(good / 50, 100)) {
      auto t = try_rate(*v, rate, c.seconds, c.vm.guest.ring_entries);
      if (!t) {
        fmt::print(stderr, "minivmm: trial: {}\n", t.err().message());
        return exit_unclean;
      }
      fmt::print("minivmm: rate {:>7} pps: {} (backlog {} at the end of the window)\n", rate, t->pass ? "verified" : "FAILS",
                 t->at_end.backlog);
      if (t->pass)
        good = rate;
      else
        bad = rate;
      rate = bad == 0 ? rate * 2 : (good + bad) / 2;
      if (good == 0 && bad != 0 && bad <= 100) break;
    }
    print_guest_profile(v->counters(), v->tsc_khz(), image.size());
    fmt::print("minivmm: highest verified rate {} pps\n", good);
    return good > 0 ? 0 : exit_unclean;
  }

  if (auto st = v->set_rate(c.rate); !st) {
    fmt::print(stderr, "minivmm: set rate: {}\n", st.err().message());
    return exit_usage;
  }
  bool ok = true;
  const double slice = c.seconds / (c.restarts + 1);
  std::uint64_t worst_pause_ns = 0;
  double worst_gap_us = 0;
  for (unsigned r = 0; r <= c.restarts; ++r) {
    if (auto st = new_gap_epoch(*v, 2000); !st) {
      fmt::print(stderr, "minivmm: {}\n", st.err().message());
      ok = false;
      break;
    }
    sleep_s(slice);
    const auto steady = v->counters();
    if (r == c.restarts) {
      fmt::print("minivmm: steady state: largest interrupt gap {:.0f} us\n", tsc_to_us(steady.max_irq_gap_tsc, v->tsc_khz()));
      break;
    }
    if (auto st = new_gap_epoch(*v, 2000); !st) {
      fmt::print(stderr, "minivmm: {}\n", st.err().message());
      ok = false;
      break;
    }
    const token t = token::generate();
    std::function<void()> while_paused;
    std::uint64_t drained_before = 0;
    if (c.pause_burst > 0) {
      // Quiesce, then have the wire deliver a burst while nobody owns the
      // device: its interrupt is posted into the preserved descriptor, and only
      // the drain at reclaim can wake the guest to consume the burst.
      auto q = drain(*v, 3000);
      if (!q || !*q) {
        fmt::print(stderr, "minivmm: restart {}: could not quiesce before the burst\n", r + 1);
        ok = false;
        break;
      }
      drained_before = host->kernel().stats().preserved_drained;
      while_paused = [&] { wire_burst(*host, c.pause_burst); };
    }
    auto timing = restart(v, connect, c.vm, fmt::format("vmm-{}", r + 1), t, while_paused);
    if (c.baseline) {
      // No keepalive in this kernel: the restart must be called off and the
      // old VMM must keep the guest running.
      const bool refused = !timing && timing.code() == errc::not_tty;
      fmt::print("minivmm: restart {}: {} ({})\n", r + 1, refused ? "refused, the guest runs on" : "NOT refused",
                 timing ? "took over" : timing.err().message());
      ok = ok && refused;
      continue;
    }
    if (!timing) {
      fmt::print(stderr, "minivmm: restart {}: {}\n", r + 1, timing.err().message());
      ok = false;
      break;
    }
    if (c.pause_burst > 0) {
      const bool consumed = *drain(*v, 3000);
      const auto drained = host->kernel().stats().preserved_drained - drained_before;
      fmt::print("minivmm: restart {}: burst of {} packets while ownerless: {} drained interrupt(s), guest {}\n", r + 1,
                 c.pause_burst, drained, consumed ? "consumed all of it" : "DID NOT consume it");
      ok = ok && consumed && drained >= 1;
      if (auto st = v->set_rate(c.rate); !st) ok = false;
    }
    const double gap_us = tsc_to_us(timing->guest_gap_tsc, v->tsc_khz());
    if (!timing->guest_resumed) {
      fmt::print(stderr, "minivmm: restart {}: the guest took no interrupt after the resume\n", r + 1);
      ok = false;
    }
    worst_pause_ns = std::max(worst_pause_ns, timing->pause_ns);
    worst_gap_us = std::max(worst_gap_us, gap_us);
    fmt::print(
        "minivmm: restart {}: VMM pause {:.0f} us (stop {:.0f}, keepalive enter {:.0f}, save {:.0f} [close device {:.0f}, "
        "KVM_GET {:.0f}], restore {:.0f}, reclaim {:.0f}, start {:.0f}; prepared beforehand in {:.0f}){}; guest: "
        "interrupt gap across the restart {:.0f} us (largest gap in the {:.2f} s before: {:.0f} us)\n",
        r + 1, us(timing->pause_ns), us(timing->stop_ns), us(timing->enter_ns), us(timing->save_ns),
        us(timing->release_ns), us(timing->get_state_ns), us(timing->restore_ns), us(timing->reclaim_ns),
        us(timing->start_ns), us(timing->prepare_ns),
        c.pause_burst > 0 ? " [quiesced, includes the burst]" : "", gap_us, slice,
        tsc_to_us(steady.max_irq_gap_tsc, v->tsc_khz()));
  }
  if (!c.handover_to.empty()) {
    // Hand the running guest to the VMM process waiting on the path, and exit
    // without stopping the wire: the device streams on, ownerless.
    auto state = v->handover(token::generate());
    if (!state) {
      fmt::print(stderr, "minivmm: handover: {}\n", state.err().message());
      return exit_unclean;
    }
    const int fd = ::open(c.handover_to.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || !write_snapshot(fd, *state)) {
      fmt::print(stderr, "minivmm: cannot write the state to {}\n", c.handover_to);
      return exit_unclean;
    }
    ::close(fd);
    const auto& t = v->timing();
    fmt::print("minivmm: handed over (stop {:.0f} us, keepalive enter {:.0f}, save {:.0f}); exiting\n", us(t.stop_ns),
               us(t.enter_ns), us(t.save_ns));
    return 0;
  }
  auto drained = drain(*v, 5000);
  auto rep = report_now(*v);
  if (!drained || !rep) {
    fmt::print(stderr, "minivmm: final snapshot failed\n");
    return exit_unclean;
  }
  rep->drained = *drained;
  fmt::print("minivmm: {}\n", rep->describe());
  print_guest_profile(rep->guest, v->tsc_khz(), image.size());
  const auto e = v->exits();
  fmt::print("minivmm: exits: runs {} mmio {} (bar0 {}, other {}) io {} kicked {}\n", e.runs, e.mmio, e.mmio_bar0,
             e.mmio_other, e.io, e.interrupted);
  if (c.restarts > 0 && !c.baseline)
    fmt::print("minivmm: {} restarts, worst VMM pause {:.0f} us, worst guest-visible gap {:.0f} us\n", c.restarts,
               us(worst_pause_ns), worst_gap_us);
  if (auto f = v->vcpu_failure()) {
    fmt::print(stderr, "minivmm: vCPU: {}\n", *f);
    ok = false;
  }
  const std::uint64_t expected = static_cast<std::uint64_t>(static_cast<double>(c.rate) * c.seconds);
  const bool clean = ok && rep->clean() && rep->drained && rep->guest.received == rep->nic.packets &&
                     rep->guest.received >= expected / 2;
  fmt::print("minivmm: {}\n", clean ? "CLEAN: every packet verified" : "NOT CLEAN");
  return c.check && !clean ? exit_unclean : 0;
}
