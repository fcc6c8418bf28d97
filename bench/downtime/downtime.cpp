// End-to-end restart downtime on the simulated host, with a host-side
// consumer standing in for the guest (it verifies every packet at 100k/s,
// which the emulated KVM guest cannot): each strategy restarts the VMM N
// times while the device streams, on the same machine, in one run.
//   floor       hand over nothing but the process (no device): the least a restart costs here
//   keepalive   this project, stage 1: enter, exit, reclaim with the token, reconnect, leave
//   fd_handoff  the QEMU CPR way: fds stay open, mappings re-pointed, interrupts re-wired
//   cold        close (FLR + 100 ms), open (FLR again), the guest driver re-initialises
// plus stage 2: freeze -> prepare -> kexec -> reclaim -> first interrupt at the guest.
// Prints a table, writes a phase timeline (CSV) for the plot, and prints one JSON line last.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "keepalive/abi/ops.hpp"
#include "kernel.hpp"
#include "platform.hpp"
#include "sim_host.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::testing;
using clock_type = std::chrono::steady_clock;

namespace {

const bdf nic0{0, 0, 4, 0};
const token tok = *token::parse("d0d0cafe-0000-4000-8000-00000000beef");

struct phase {
  std::string name;
  double start_ms, end_ms;  // relative to the pause
};

struct outcome {
  std::vector<double> pauses_ms;
  std::vector<phase> timeline;  // of the first cycle
  std::uint64_t drops = 0, lost_seqs = 0, corrupted = 0, dma_faults = 0, ir_faults = 0, lost_irqs = 0, resets = 0;
  std::uint64_t received = 0, packets = 0;
};

double ms_since(clock_type::time_point t0, clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(t - t0).count();
}

struct rig {
  explicit rig(std::uint64_t ram_mib, std::uint64_t rate) : rate_{rate} {
    layout.ram_bytes = ram_mib << 20;
    layout.ring_entries = 65536 / 4;
    platform_config pc;
    pc.phys_bytes = (64ull << 20) + layout.ram_bytes;
    plat = std::move(*platform::create(pc));
    k = std::move(*kernel::boot(*plat, kcfg));
    ram = hpa{kcfg.map.guest_start()};
    g = std::make_unique<guest>(*plat, ram, layout, nic0);
  }
  ~rig() {
    plat->find_nic(nic0)->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
    if (g) g->stop();
  }
  std::unique_ptr<vmm> start(const std::string& name) {
    auto v = std::make_unique<vmm>(*k, name, *g, layout, ram, nic0);
    if (!v->cold_start(rate_)) throw std::runtime_error("cold start failed");
    g->start();
    return v;
  }
  void finish(outcome& o) {
    plat->find_nic(nic0)->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
    for (int i = 0; i < 500 && g->received.load() < plat->find_nic(nic0)->stats().packets; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds{2});
    const auto n = plat->find_nic(nic0)->stats();
    const auto c = plat->vtd().counters();
    o.drops = n.drops;
    o.resets = n.resets - 1;  // the first open's reset is not the restart's
    o.packets = n.packets;
    o.received = g->received;
    o.lost_seqs = g->lost_seqs;
    o.corrupted = g->corrupted;
    o.dma_faults = c.dma_faults;
    o.ir_faults = c.ir_faults;
    o.lost_irqs = c.irq_no_cpu + k->stats().spurious;
  }
  std::uint64_t rate_;
  guest_layout layout;
  std::unique_ptr<platform> plat;
  kernel_config kcfg;
  std::unique_ptr<kernel> k;
  hpa ram;
  std::unique_ptr<guest> g;
};

using step = std::pair<const char*, std::function<void()>>;

// Runs `steps` between guest pause and resume, recording each phase.
double timed_pause(rig& r, const std::vector<step>& steps, std::vector<phase>* timeline) {
  const auto t0 = clock_type::now();
  r.g->pause();
  for (const auto& [name, fn] : steps) {
    const auto a = clock_type::now();
    fn();
    if (timeline) timeline->push_back({name, ms_since(t0, a), ms_since(t0, clock_type::now())});
  }
  r.g->resume();
  return ms_since(t0, clock_type::now());
}

outcome run_strategy(const std::string& strategy, std::uint64_t ram_mib, std::uint64_t rate, int cycles) {
  rig r{ram_mib, rate};
  outcome o;
  auto cur = r.start("vmm-0");
  std::shared_ptr<process> floor_proc;
  for (int i = 0; i < cycles; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds{strategy == "cold" ? 20 : 5});
    auto* tl = i == 0 ? &o.timeline : nullptr;
    std::unique_ptr<vmm> next;
    const std::string name = "vmm-" + std::to_string(i + 1);
    std::vector<step> steps;
    if (strategy == "floor") {
      steps = {{"hand over", [&] { floor_proc = r.k->spawn(name); }}, {"old exits", [&] { floor_proc.reset(); }}};
    } else if (strategy == "keepalive") {
      steps = {{"enter keepalive", [&] { (void)cur->enter_keepalive(tok); }},
               {"old exits", [&] { cur->exit(); }},
               {"reclaim + reconnect + leave", [&] {
                  next = std::make_unique<vmm>(*r.k, name, *r.g, r.layout, r.ram, nic0);
                  if (!next->reclaim(tok)) throw std::runtime_error("reclaim failed");
                }}};
    } else if (strategy == "fd_handoff") {
      steps = {{"re-point mappings + re-wire", [&] {
                  if (!cur->fd_handoff()) throw std::runtime_error("fd hand-over failed");
                }}};
    } else {  // cold
      steps = {{"close (disable + FLR)", [&] { cur->exit(); }},
               {"open (FLR) + map + wire + re-init", [&] {
                  next = std::make_unique<vmm>(*r.k, name, *r.g, r.layout, r.ram, nic0);
                  if (!next->cold_start(rate)) throw std::runtime_error("cold start failed");
                }}};
    }
    o.pauses_ms.push_back(timed_pause(r, steps, tl));
    if (next) cur = std::move(next);
  }
  r.finish(o);
  return o;
}

// Stage 2: from freeze to the first interrupt the reclaimed guest takes.
outcome run_stage2(std::uint64_t ram_mib, std::uint64_t rate, int cycles) {
  rig r{ram_mib, rate};
  outcome o;
  auto cur = r.start("vmm-0");
  for (int i = 0; i < cycles; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds{5});
    const auto t0 = clock_type::now();
    r.g->pause();
    (void)cur->enter_keepalive(tok);
    cur->exit();
    {
      auto ctl = r.k->spawn("keepalivectl");
      const int fd = *ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
      if (!abi::stage2_prepare(*ctl, fd)) throw std::runtime_error("prepare failed");
    }
    auto nk = sim::kexec(std::move(r.k));
    if (!nk) throw std::runtime_error("kexec failed");
    r.k = std::move(*nk);
    auto next = std::make_unique<vmm>(*r.k, "vmm-" + std::to_string(i + 1), *r.g, r.layout, r.ram, nic0);
    if (!next->reclaim(tok)) throw std::runtime_error("reclaim after kexec failed");
    const auto irqs = r.g->interrupts.load();
    r.g->resume();
    while (r.g->interrupts.load() == irqs) std::this_thread::yield();
    o.pauses_ms.push_back(ms_since(t0, clock_type::now()));
    cur = std::move(next);
  }
  r.finish(o);
  return o;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  int cycles = 20;
  std::uint64_t rate = 100000;
  std::string timeline_path = "downtime-timeline.csv";
  std::vector<std::uint64_t> rams{1024, 8192};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cycles" && i + 1 < argc) cycles = std::stoi(argv[++i]);
    else if (a == "--rate" && i + 1 < argc) rate = std::stoull(argv[++i]);
    else if (a == "--timeline" && i + 1 < argc) timeline_path = argv[++i];
    else if (a == "--quick") cycles = 3, rams = {1024};
    else {
      std::fprintf(stderr, "usage: %s [--cycles N] [--rate PPS] [--timeline FILE] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const std::vector<std::string> strategies{"floor", "keepalive", "fd_handoff", "cold"};
  std::map<std::string, outcome> res;  // "<strategy>@<ram>"
  std::ofstream tl{timeline_path};
  tl << "strategy,phase,start_ms,end_ms\n";
  fmt::print("{:<12} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}\n", "strategy", "RAM MiB", "median ms",
             "p99 ms", "dropped", "lost", "corrupt", "faults", "resets", "irq lost");
  for (auto ram : rams) {
    for (const auto& s : strategies) {
      const int n = s == "cold" ? std::max(2, cycles / 4) : cycles;
      auto o = run_strategy(s, ram, rate, n);
      fmt::print("{:<12} {:>8} {:>10.3f} {:>10.3f} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}\n", s, ram,
                 percentile(o.pauses_ms, 0.5), percentile(o.pauses_ms, 0.99), o.drops, o.lost_seqs, o.corrupted,
                 o.dma_faults + o.ir_faults, o.resets, o.lost_irqs);
      if (ram == rams.front())
        for (const auto& p : o.timeline) tl << s << ',' << p.name << ',' << p.start_ms << ',' << p.end_ms << '\n';
      res[s + "@" + std::to_string(ram)] = std::move(o);
    }
    auto o = run_stage2(ram, rate, std::max(2, cycles / 10));
    fmt::print("{:<12} {:>8} {:>10.3f} {:>10.3f} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}   (freeze -> first interrupt)\n",
               "stage2", ram, percentile(o.pauses_ms, 0.5), percentile(o.pauses_ms, 0.99), o.drops, o.lost_seqs,
               o.corrupted, o.dma_faults + o.ir_faults, o.resets, o.lost_irqs);
    res["stage2@" + std::to_string(ram)] = std::move(o);
  }
  const auto med = [&](const std::string& key) { return percentile(res[key].pauses_ms, 0.5); };
  const std::string r1 = std::to_string(rams.front());
  const auto& ka = res["keepalive@" + r1];
  std::string json = fmt::format(
      "{{\"rate_pps\":{},\"cycles\":{},\"floor_ms\":{:.4f},\"keepalive_ms\":{:.4f},\"fd_handoff_ms\":{:.4f},"
      "\"cold_ms\":{:.4f},\"keepalive_p99_ms\":{:.4f},\"keepalive_over_floor\":{:.3f},\"cold_over_keepalive\":{:.1f},"
      "\"keepalive_lost\":{},\"keepalive_dropped\":{},\"keepalive_faults\":{},\"keepalive_resets\":{},"
      "\"stage2_ms\":{:.3f},\"stage2_lost\":{}",
      rate, cycles, med("floor@" + r1), med("keepalive@" + r1), med("fd_handoff@" + r1), med("cold@" + r1),
      percentile(ka.pauses_ms, 0.99), med("keepalive@" + r1) / std::max(med("floor@" + r1), 1e-6),
      med("cold@" + r1) / std::max(med("keepalive@" + r1), 1e-6), ka.lost_seqs + ka.lost_irqs, ka.drops,
      ka.dma_faults + ka.ir_faults, ka.resets, med("stage2@" + r1), res["stage2@" + r1].lost_seqs);
  if (rams.size() > 1) {
    const std::string r8 = std::to_string(rams.back());
    json += fmt::format(",\"floor_ms_{}\":{:.4f},\"keepalive_ms_{}\":{:.4f},\"fd_handoff_ms_{}\":{:.4f},\"cold_ms_{}\":{:.4f}",
                        r8, med("floor@" + r8), r8, med("keepalive@" + r8), r8, med("fd_handoff@" + r8), r8,
                        med("cold@" + r8));
  }
  json += ",\"guest_ram_mib\":[";
  for (std::size_t i = 0; i < rams.size(); ++i) json += (i ? "," : "") + std::to_string(rams[i]);
  json += "]}";
  fmt::print("{}\n", json);
  std::uint64_t lost = 0;
  for (const auto& [k, o] : res)
    if (k.starts_with("keepalive") || k.starts_with("stage2")) lost += o.lost_seqs + o.lost_irqs + o.drops + o.resets;
  return lost == 0 ? 0 : 1;
}
