// minivmm_downtime: restart downtime of the SAME real-KVM guest (1 vCPU, the
// freestanding guest verifying every packet of the sim NIC) under four
// restart strategies, N cycles each, for each guest RAM size:
//   floor       vCPU state hand-over only: VM, slots, vCPU, routes prepared
//               ahead; the device's files carried untouched, the wire stopped
//               (no device traffic): the least a VMM restart costs here
//   keepalive   this project, stage 1: enter, save, close (OWNERLESS), restore,
//               reclaim with the token, reconnect (drain), leave
//   fd_handoff  the QEMU CPR way: device files carried open, DMA mappings
//               re-pointed (FLAG_VADDR), vector re-posted to the new VM, new
//               irqfd on the carried eventfd; no keepalive state in the kernel
//   cold        the device is closed (FLR + 100 ms), opened (FLR), mapped and
//               wired again, and the guest boots again on the same RAM: its
//               driver re-initialises the NIC (the guest cannot survive a
//               device reset, as with --reclaim-reboot)
// Every strategy is a quit + start to a VMM prepared while the old one runs
// (two sim processes of an in-process sim host; the KVM side is real).
// Prints a table, writes a phase timeline (CSV: strategy,phase,start_ms,end_ms;
// names without commas) of the median restart per strategy,
// and prints one JSON object as its last line. Exit 0, 1 when keepalive lost
// a packet or an interrupt, 77 without /dev/kvm.
//   minivmm_downtime [--cycles N] [--cold-cycles N] [--rate PPS] [--ram-mib 1024,8192]
//                    [--slice SECONDS] [--timeline CSV]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "harness.hpp"
#include "inproc_host.hpp"

using namespace keepalive;
using namespace keepalive::minivmm;

namespace {

constexpr int exit_skip = 77;

struct phase {
  std::string name;
  std::uint64_t ns;
};

struct outcome {
  std::vector<double> pauses_ms, guest_gaps_ms;
  std::vector<std::vector<phase>> cycles;  // phases of every restart
  std::uint64_t sequences = 0, received = 0, guest_lost = 0, corrupted = 0, nic_drops = 0, dma_faults = 0,
                ir_faults = 0, nic_dma_errors = 0, spurious = 0, irq_no_cpu = 0, no_resume = 0, resets = 0;
  bool drained = true;
  [[nodiscard]] std::uint64_t dropped() const { return sequences > received ? sequences - received : 0; }
  [[nodiscard]] std::uint64_t interrupts_lost() const { return spurious + irq_no_cpu + no_resume; }
};

double ms(std::uint64_t ns) { return static_cast<double>(ns) / 1e6; }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

struct runner {
  std::uint64_t rate = 3000, ram_mib = 1024;
  double slice_s = 0.25;
  std::span<const std::byte> image;

  vmm_options options() const {
    vmm_options o;
    const std::uint64_t low = std::min<std::uint64_t>(ram_mib, 3072);
    o.guest.ram_bytes = low << 20;
    o.high_ram_bytes = (ram_mib - low) << 20;
    o.guest.ring_entries = 16384;
    o.echo_guest_console = false;
    o.nic = inproc_host::nic0();
    return o;
  }

  static status wait_running(vmm& v, int timeout_ms) {
    for (int waited_us = 0;; waited_us += 200) {
      const auto c = v.counters();
      if (c.state == MINIVMM_STATE_RUNNING) return {};
      if (c.state == MINIVMM_STATE_FAULTED || c.state == MINIVMM_STATE_BAD_BOOT_INFO)
        return {errc::io, fmt::format("guest state {}", c.state)};
      if (auto f = v.vcpu_failure()) return {errc::io, *f};
      if (waited_us >= timeout_ms * 1000) return {errc::again, "guest not running"};
      std::this_thread::sleep_for(std::chrono::microseconds{200});
    }
  }

  result<outcome> run(const std::string& strategy, int cycles) const {
    const auto opt = options();
    inproc_config hc;
    hc.guest_area_bytes = opt.guest.ram_bytes + opt.high_ram_bytes;
    auto h = inproc_host::create(hc);
    if (!h) return h.err();
    auto& host = **h;
    connector connect = [&](const std::string& name) { return host.connect(name); };
    auto first = vmm::prepare(connect("vmm-0"), opt);
    if (!first) return first.err();
    std::unique_ptr<vmm> v = std::move(*first);
    if (auto st = v->boot(image); !st) return st.err();
    if (auto st = wait_running(*v, 30000); !st) return st.err();
    const std::uint64_t first_seq = v->counters().expected_seq;
    const bool traffic = strategy != "floor";
    if (traffic)
      if (auto st = v->set_rate(rate); !st) return st.err();
    outcome o;
    std::uint64_t earlier_lives = 0, earlier_lost = 0, earlier_corrupted = 0;
    const token t = token::generate();
    for (int i = 0; i < cycles; ++i) {
      std::this_thread::sleep_for(std::chrono::duration<double>{slice_s});
      const std::string name = fmt::format("vmm-{}", i + 1);
      std::uint64_t pause_ns = 0, gap_tsc = 0;
      std::vector<phase> tl;
      if (strategy == "keepalive") {
        auto r = restart(v, connect, opt, name, t);
        if (!r) return r.err();
        pause_ns = r->pause_ns;
        gap_tsc = r->guest_gap_tsc;
        if (!r->guest_resumed) ++o.no_resume;
        tl = {{"stop vCPU", r->stop_ns},
              {"keepalive enter", r->enter_ns},
              {"close device (OWNERLESS)", r->release_ns},
              {"KVM_GET vCPU + irqchip", r->get_state_ns},
              {"state to the new VMM", 0},
              {"KVM_SET vCPU + irqchip", r->restore_ns},
              {"reclaim: open+map+SET_IRQS+bypass+leave", r->reclaim_ns},
              {"start vCPU", r->start_ns}};
        std::uint64_t named = 0;
        for (const auto& p : tl) named += p.ns;
        tl[4].ns = pause_ns > named ? pause_ns - named : 0;
      } else if (strategy == "floor" || strategy == "fd_handoff") {
        const bool handoff = strategy == "fd_handoff";
        auto next = vmm::prepare(connect(name), opt);  // before the pause
        if (!next) return next.err();
        auto s = v->save_for_restart(handoff);
        if (!s) return s.err();
        const restart_timing old_t = v->timing();
        const std::uint64_t saved = monotonic_ns();
        auto fds = v->release_fds();
        auto snap = snapshot_without_devices(*s);  // as bytes, as through a pipe
        if (!snap) return snap.err();
        auto bytes = encode_snapshot(*snap);
        if (!bytes) return bytes.err();
        auto back = decode_snapshot(*bytes);
        if (!back) return back.err();
        auto decoded = vm_state_of(*back);
        if (!decoded) return decoded.err();
        const std::uint64_t handed = monotonic_ns();
        auto st = (*next)->take_over_carried(*decoded, std::move(fds), handoff);
        v.reset();  // the old VM's teardown: after the resume
        if (!st) return st.err();
        v = std::move(*next);
        restart_timing r = v->timing();
        if (handoff) {
          measure_resume_gap(*v, r);
          gap_tsc = r.guest_gap_tsc;
          if (!r.guest_resumed) ++o.no_resume;
        }
        pause_ns = r.pause_ns;
        tl = {{"stop vCPU", old_t.stop_ns}};
        if (handoff) tl.push_back({"KVM_IRQFD deassign (flush)", old_t.flush_ns});
        tl.insert(tl.end(), {{"KVM_GET vCPU + irqchip", old_t.get_state_ns},
                             {"files + state to the new VMM", handed - saved},
                             {"KVM_SET vCPU + irqchip", r.restore_ns}});
        if (handoff)
          tl.insert(tl.end(), {{"re-point DMA (UNMAP+MAP VADDR)", r.repoint_ns},
                               {"re-wire: SET_IRQS+bypass+KVM_IRQFD", r.rewire_ns}});
        tl.push_back({"start vCPU", r.start_ns});
      } else if (strategy == "cold") {
        auto next = vmm::prepare(connect(name), opt);
        if (!next) return next.err();
        const std::uint64_t t0 = monotonic_ns();
        v->halt();
        const std::uint64_t stopped = monotonic_ns();
        const auto c = v->counters();  // frozen: this guest life's totals
        earlier_lives += c.received;
        earlier_lost += c.lost;
        earlier_corrupted += c.corrupted + c.reordered;
        v.reset();  // closes the device without keepalive: disable + FLR (100 ms)
        const std::uint64_t closed = monotonic_ns();
        if (auto st = (*next)->boot(image); !st) return st.err();  // open (FLR), map, enable, wire, load, run
        const std::uint64_t booted = monotonic_ns();
        v = std::move(*next);
        if (auto st = wait_running(*v, 30000); !st) return st.err();
        const std::uint64_t running = monotonic_ns();
        pause_ns = running - t0;
        tl = {{"stop vCPU", stopped - t0},
              {"old VMM exits: close device (FLR)", closed - stopped},
              {"open (FLR)+map+enable+wire+load guest", booted - closed},
              {"guest boots; driver re-initialises NIC", running - booted}};
      } else {
        return error{errc::invalid, "unknown strategy " + strategy};
      }
      o.pauses_ms.push_back(ms(pause_ns));
      if (gap_tsc != 0) o.guest_gaps_ms.push_back(tsc_to_us(gap_tsc, v->tsc_khz()) / 1e3);
      o.cycles.push_back(std::move(tl));
    }
    auto d = drain(*v, 10000);
    if (!d) return d.err();
    auto n = read_nic(*v);
    if (!n) return n.err();
    const auto c = v->counters();
    o.drained = *d;
    o.received = earlier_lives + c.received;
    o.sequences = n->next_seq - first_seq;
    o.guest_lost = earlier_lost + c.lost;
    o.corrupted = earlier_corrupted + c.corrupted + c.reordered;
    o.nic_drops = n->drops;
    o.nic_dma_errors = n->dma_errors;
    const auto vt = host.platform().vtd().counters();
    o.dma_faults = vt.dma_faults;
    o.ir_faults = vt.ir_faults;
    o.irq_no_cpu = vt.irq_no_cpu;
    o.spurious = host.kernel().stats().spurious;
    o.resets = host.platform().find_nic(inproc_host::nic0())->stats().resets - 1;  // not the first open's
    if (!o.drained) ++o.no_resume;  // the guest did not get to everything the device delivered
    if (auto f = v->vcpu_failure()) return error{errc::io, "vCPU: " + *f};
    return o;
  }
};

// The restart whose pause is the median one (what the timeline plots).
const std::vector<phase>& median_cycle(const outcome& o) {
  std::vector<std::size_t> idx(o.pauses_ms.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return o.pauses_ms[a] < o.pauses_ms[b]; });
  return o.cycles[idx[(idx.size() - 1) / 2]];
}

// Median of each phase over every restart (phases in the order of the first).
std::vector<std::pair<std::string, double>> phase_medians(const outcome& o) {
  std::vector<std::pair<std::string, double>> out;
  for (std::size_t k = 0; k < o.cycles.front().size(); ++k) {
    std::vector<double> v;
    for (const auto& c : o.cycles)
      if (k < c.size()) v.push_back(ms(c[k].ns));
    out.emplace_back(o.cycles.front()[k].name, percentile(v, 0.5));
  }
  return out;
}

std::string load_average() {
  std::ifstream f{"/proc/loadavg"};
  double a = 0, b = 0, c = 0;
  f >> a >> b >> c;
  return fmt::format("{:.2f} {:.2f} {:.2f}", a, b, c);
}

}  // namespace

int main(int argc, char** argv) {
  int cycles = 20, cold_cycles = 5;
  runner base;
  std::string timeline_path = "kvm-timeline.csv";
  std::vector<std::uint64_t> rams{1024, 8192};
  std::vector<std::string> strategies{"floor", "keepalive", "fd_handoff", "cold"};
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const bool has = i + 1 < argc;
    if (a == "--cycles" && has) cycles = std::max(1, std::atoi(argv[++i]));
    else if (a == "--cold-cycles" && has) cold_cycles = std::max(1, std::atoi(argv[++i]));
    else if (a == "--rate" && has) base.rate = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--slice" && has) base.slice_s = std::strtod(argv[++i], nullptr);
    else if (a == "--timeline" && has) timeline_path = argv[++i];
    else if (a == "--strategies" && has) {  // a subset, for experiments (the JSON needs all four)
      std::vector<std::string> pick;
      for (std::string_view s = argv[++i]; !s.empty();) {
        const auto comma = s.find(',');
        pick.emplace_back(s.substr(0, comma));
        s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
      }
      strategies = pick;
    }
    else if (a == "--ram-mib" && has) {
      rams.clear();
      for (std::string_view s = argv[++i]; !s.empty();) {
        const auto comma = s.find(',');
        rams.push_back(std::strtoull(std::string{s.substr(0, comma)}.c_str(), nullptr, 10));
        s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
      }
      if (std::any_of(rams.begin(), rams.end(), [](std::uint64_t m) { return m < 64 || m % 2 != 0; })) rams.clear();
    } else rams.clear();
    if (rams.empty() || !(base.slice_s > 0)) {
      std::fprintf(stderr,
                   "usage: %s [--cycles N] [--cold-cycles N] [--rate PPS] [--ram-mib MiB[,MiB...]] [--slice S] "
                   "[--timeline CSV] [--strategies floor,keepalive,fd_handoff,cold]\n",
                   argv[0]);
      return 2;
    }
  }
  if (int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC); fd < 0) {
    fmt::print("minivmm_downtime: SKIP: cannot open /dev/kvm: {}\n", std::strerror(errno));
    fmt::print("{{\"kvm\":false,\"kvm_skip_reason\":\"cannot open /dev/kvm: {}\"}}\n", std::strerror(errno));
    return exit_skip;
  } else {
    ::close(fd);
  }
  base.image = builtin_guest_image();
  std::map<std::string, outcome> res;  // "<strategy>@<ram>"
  std::ofstream tl{timeline_path};
  tl << "strategy,phase,start_ms,end_ms\n";
  fmt::print("KVM-level restart downtime: real /dev/kvm guest (1 vCPU) verifying every packet, wire {} packets/s, "
             "load average {}\n",
             base.rate, load_average());
  fmt::print("{:<11} {:>7} {:>6} {:>10} {:>10} {:>12} {:>9} {:>8} {:>8} {:>9} {:>10} {:>7}\n", "strategy", "RAM MiB",
             "cycles", "median ms", "p99 ms", "guest gap ms", "packets", "dropped", "corrupt", "irq lost", "DMA faults",
             "resets");
  bool ok = true;
  for (auto ram : rams) {
    for (const auto& s : strategies) {
      runner r = base;
      r.ram_mib = ram;
      const int n = s == "cold" ? cold_cycles : cycles;
      auto o = r.run(s, n);
      if (!o) {
        fmt::print(stderr, "minivmm_downtime: {} @ {} MiB: {}\n", s, ram, o.err().message());
        fmt::print("{{\"kvm\":true,\"error\":\"{} @ {} MiB: {}\"}}\n", s, ram, o.err().message());
        return 1;
      }
      if (o->interrupts_lost() != 0 || o->dropped() != 0)
        fmt::print(stderr,
                   "  {} @ {} MiB: kernel spurious {}, IR no-cpu {}, restarts without a resume interrupt or not drained "
                   "{}; guest lost {}, NIC drops {}\n",
                   s, ram, o->spurious, o->irq_no_cpu, o->no_resume, o->guest_lost, o->nic_drops);
      fmt::print("{:<11} {:>7} {:>6} {:>10.3f} {:>10.3f} {:>12.2f} {:>9} {:>8} {:>8} {:>9} {:>10} {:>7}\n", s, ram, n,
                 percentile(o->pauses_ms, 0.5), percentile(o->pauses_ms, 0.99),
                 percentile(o->guest_gaps_ms, 0.5), o->received, o->dropped(), o->corrupted, o->interrupts_lost(),
                 o->dma_faults + o->ir_faults + o->nic_dma_errors, o->resets);
      std::fflush(stdout);
      if (ram == rams.front()) {
        double at = 0;
        for (const auto& p : median_cycle(*o)) {
          tl << s << ',' << p.name << ',' << at << ',' << at + ms(p.ns) << '\n';
          at += ms(p.ns);
        }
      }
      // Keepalive must lose nothing; what the alternatives lose is reported.
      if (s == "keepalive")
        ok = ok && o->dropped() == 0 && o->corrupted == 0 && o->interrupts_lost() == 0 && o->resets == 0;
      res[s + "@" + std::to_string(ram)] = std::move(*o);
    }
  }
  for (auto ram : rams) {
    fmt::print("median of each phase over the restarts ({} MiB), ms:\n", ram);
    for (const auto& s : strategies) {
      std::string line = fmt::format("  {:<11}", s);
      for (const auto& [name, m] : phase_medians(res[s + "@" + std::to_string(ram)])) line += fmt::format(" {} {:.3f} |", name, m);
      fmt::print("{}\n", line);
    }
    fmt::print("the slowest restart of each strategy ({} MiB), ms:\n", ram);
    for (const auto& s : strategies) {
      const auto& o = res[s + "@" + std::to_string(ram)];
      const auto worst = std::max_element(o.pauses_ms.begin(), o.pauses_ms.end()) - o.pauses_ms.begin();
      std::string line = fmt::format("  {:<11}", s);
      for (const auto& p : o.cycles[static_cast<std::size_t>(worst)]) line += fmt::format(" {} {:.3f} |", p.name, ms(p.ns));
      fmt::print("{}\n", line);
    }
  }
  const auto med = [&](const std::string& k) { return percentile(res[k].pauses_ms, 0.5); };
  const auto p99 = [&](const std::string& k) { return percentile(res[k].pauses_ms, 0.99); };
  std::string json = fmt::format("{{\"kvm\":true,\"rate_pps\":{},\"cycles\":{},\"cold_cycles\":{},\"load_average\":\"{}\"",
                                 base.rate, cycles, cold_cycles, load_average());
  for (std::size_t i = 0; i < rams.size(); ++i) {
    const std::string r = std::to_string(rams[i]);
    const std::string suffix = i == 0 ? "" : "_" + r;  // the first RAM size is the headline
    for (const auto& s : strategies)
      json += fmt::format(",\"{0}_ms{1}\":{2:.4f},\"{0}_p99_ms{1}\":{3:.4f}", s, suffix, med(s + "@" + r), p99(s + "@" + r));
    const auto& ka = res["keepalive@" + r];
    const auto& fd = res["fd_handoff@" + r];
    const auto& cold = res["cold@" + r];
    json += fmt::format(
        ",\"keepalive_over_floor{0}\":{1:.3f},\"cold_over_keepalive{0}\":{2:.1f},\"keepalive_lost{0}\":{3},"
        "\"keepalive_dropped{0}\":{4},\"keepalive_interrupts_lost{0}\":{5},\"keepalive_dma_faults{0}\":{6},"
        "\"keepalive_guest_gap_ms{0}\":{7:.3f},\"fd_handoff_dropped{0}\":{8},\"fd_handoff_interrupts_lost{0}\":{9},"
        "\"cold_dropped{0}\":{10},\"cold_resets{0}\":{11}",
        suffix, med("keepalive@" + r) / std::max(med("floor@" + r), 1e-6),
        med("cold@" + r) / std::max(med("keepalive@" + r), 1e-6),
        ka.dropped() + ka.corrupted + ka.interrupts_lost(), ka.dropped(), ka.interrupts_lost(),
        ka.dma_faults + ka.ir_faults + ka.nic_dma_errors, percentile(ka.guest_gaps_ms, 0.5), fd.dropped(),
        fd.interrupts_lost(), cold.dropped(), cold.resets);
  }
  json += ",\"guest_ram_mib\":[";
  for (std::size_t i = 0; i < rams.size(); ++i) json += (i ? "," : "") + std::to_string(rams[i]);
  json += "]}";
  fmt::print("{}\n", json);
  return ok ? 0 : 1;
}
