#include "ka_test_host.h"

#include <linux/vfio_keepalive.h>

#include <cerrno>
#include <chrono>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "kernel.hpp"
#include "keepalive/abi/ops.hpp"
#include "keepalive/sim_transport.hpp"
#include "platform.hpp"
#include "server.hpp"
#include "sim_host.hpp"

using namespace keepalive;
using namespace keepalive::sim;
using namespace keepalive::sim::testing;

namespace {
bdf nic_bdf(unsigned i) { return bdf{0, 0, static_cast<std::uint8_t>(4 + i), 0}; }

process& proc(void* user) { return *static_cast<process*>(user); }

template <typename F>
int wait_for(F f, unsigned timeout_ms) {
  for (unsigned t = 0; t < timeout_ms; ++t) {
    if (f()) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds{1});
  }
  return f() ? 0 : -ETIMEDOUT;
}

long sys_ioctl(void* u, int fd, unsigned long cmd, void* arg) { return proc(u).ioctl(fd, cmd, arg); }
int sys_open(void* u, const char* path, int flags) {
  auto r = proc(u).open(path, flags);
  return r ? *r : -r.err().errno_value();
}
int sys_close(void* u, int fd) { return -static_cast<int>(proc(u).close(fd)); }
std::int64_t sys_pread(void* u, int fd, void* buf, std::size_t len, std::uint64_t off) {
  auto r = proc(u).pread(fd, {static_cast<std::byte*>(buf), len}, off);
  return r ? static_cast<std::int64_t>(*r) : -r.err().errno_value();
}
std::int64_t sys_pwrite(void* u, int fd, const void* buf, std::size_t len, std::uint64_t off) {
  auto r = proc(u).pwrite(fd, {static_cast<const std::byte*>(buf), len}, off);
  return r ? static_cast<std::int64_t>(*r) : -r.err().errno_value();
}
}  // namespace

struct ka_test_host {
  // In-process mode: platform + kernel here. Daemon mode: an in-process
  // keepalive-simd server; the control process is a transport connection.
  std::unique_ptr<simd::server> srv;
  std::thread runner;
  std::unique_ptr<sim_transport> ctl_link;
  std::unique_ptr<platform> owned_plat;
  platform* plat = nullptr;
  kernel_config kcfg;
  std::unique_ptr<kernel> k;
  hpa ram;
  std::uint64_t ram_bytes = 16ull << 20;
  std::vector<std::unique_ptr<guest>> guests;
  struct live_process {
    std::shared_ptr<process> p;
    std::unique_ptr<ka_syscalls> ops;
  };
  std::vector<live_process> processes;
  std::shared_ptr<process> ctl;
  abi::syscalls* ctl_sys = nullptr;
  int ctl_fd = -1;

  void add_guests(unsigned nics) {
    for (unsigned i = 0; i < nics; ++i) {
      guest_layout l;
      l.ring_entries = 8192;  // 1.6 s at 5k packets/s
      l.ring_gpa = 0x20000ull * (i + 1);
      l.buffers_gpa = 0x200000ull * (i + 1);
      guests.push_back(std::make_unique<guest>(*plat, ram, l, nic_bdf(i)));
    }
  }
  // A kernel counter: directly, or from the daemon's stats JSON.
  std::uint64_t kernel_stat(std::uint64_t kernel_stats::*field, const char* json_key) {
    if (k) return k->stats().*field;
    auto text = ctl_link->stats_json();
    if (!text) return ~std::uint64_t{0};
    const std::string key = std::string{"\""} + json_key + "\":";
    const auto at = text->find(key);
    return at == std::string::npos ? ~std::uint64_t{0} : std::stoull(text->substr(at + key.size()));
  }

  ~ka_test_host() {
    guests.clear();  // consumer threads stop
    for (unsigned i = 0; plat && i < plat->functions().size(); ++i)
      if (auto* n = plat->find_nic(nic_bdf(i))) n->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
    processes.clear();
    ctl.reset();
    if (srv) {
      ctl_link.reset();
      srv->stop();
      runner.join();
      srv.reset();
    }
  }
};

extern "C" {

ka_test_host* ka_test_host_new(unsigned nics, int posted) {
  auto h = std::make_unique<ka_test_host>();
  platform_config pc;
  pc.phys_bytes = 96ull << 20;
  pc.nics = nics;
  pc.posted_interrupts = posted != 0;
  auto plat = platform::create(pc);
  if (!plat) return nullptr;
  h->owned_plat = std::move(*plat);
  h->plat = h->owned_plat.get();
  h->kcfg.map.kernel_end = 64ull << 20;
  auto k = kernel::boot(*h->plat, h->kcfg);
  if (!k) return nullptr;
  h->k = std::move(*k);
  h->ram = hpa{h->kcfg.map.guest_start()};
  h->add_guests(nics);
  h->ctl = h->k->spawn("keepalivectl");
  h->ctl_sys = h->ctl.get();
  auto fd = h->ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
  if (!fd) return nullptr;
  h->ctl_fd = *fd;
  return h.release();
}

ka_test_host* ka_test_host_new_daemon(const char* socket_path, unsigned nics) {
  auto h = std::make_unique<ka_test_host>();
  simd::server_config cfg;
  cfg.socket_path = socket_path;
  cfg.phys_mib = 96;
  cfg.nics = nics;
  auto srv = simd::server::start(cfg);
  if (!srv) return nullptr;
  h->srv = std::move(*srv);
  h->runner = std::thread{[s = h->srv.get()] { s->run(); }};
  h->plat = &h->srv->hardware();
  auto link = sim_transport::connect(socket_path);
  if (!link) return nullptr;
  h->ctl_link = std::move(*link);
  h->ctl_sys = h->ctl_link.get();
  h->ram = hpa{h->ctl_link->guest_start()};
  h->add_guests(nics);
  auto fd = h->ctl_link->open(VFIO_KEEPALIVE_CTL_PATH, 0);
  if (!fd) return nullptr;
  h->ctl_fd = *fd;
  return h.release();
}

void ka_test_host_free(ka_test_host* h) { delete h; }

const ka_syscalls* ka_test_host_spawn(ka_test_host* h, const char* name) {
  if (!h->k) return nullptr;  // daemon mode: connect with ka_connect_sim
  ka_test_host::live_process lp;
  lp.p = h->k->spawn(name);
  lp.ops = std::make_unique<ka_syscalls>(ka_syscalls{lp.p.get(), sys_ioctl, sys_open, sys_close, sys_pread, sys_pwrite});
  const ka_syscalls* out = lp.ops.get();
  h->processes.push_back(std::move(lp));
  return out;
}

void ka_test_host_exit(ka_test_host* h, const ka_syscalls* p) {
  for (auto it = h->processes.begin(); it != h->processes.end(); ++it)
    if (it->ops.get() == p) {
      it->p->exit();
      h->processes.erase(it);
      return;
    }
}

std::uint64_t ka_test_host_ram_vaddr(const ka_test_host* h) { return h->ram.value(); }
std::uint64_t ka_test_host_ram_bytes(const ka_test_host* h) { return h->ram_bytes; }
int ka_test_host_guest_eventfd(const ka_test_host* h, unsigned nic) {
  return nic < h->guests.size() ? h->guests[nic]->irq_fd() : -1;
}
void ka_test_host_guest_init(ka_test_host* h, unsigned nic) { h->guests.at(nic)->init_ring(); }
void ka_test_host_guests_start(ka_test_host* h) {
  for (auto& g : h->guests) g->start();
}
void ka_test_host_guests_pause(ka_test_host* h) {
  for (auto& g : h->guests) g->pause();
}
void ka_test_host_guests_resume(ka_test_host* h) {
  for (auto& g : h->guests) g->resume();
}

void ka_test_host_drain(ka_test_host* h) {
  for (unsigned i = 0; i < h->guests.size(); ++i) h->plat->find_nic(nic_bdf(i))->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  for (unsigned i = 0; i < h->guests.size(); ++i)
    (void)wait_for([&] { return h->guests[i]->received.load() >= h->plat->find_nic(nic_bdf(i))->stats().packets; }, 5000);
}

int ka_test_host_wait_received(ka_test_host* h, std::uint64_t more, unsigned timeout_ms) {
  std::vector<std::uint64_t> base;
  for (auto& g : h->guests) base.push_back(g->received.load());
  return wait_for(
      [&] {
        for (std::size_t i = 0; i < base.size(); ++i)
          if (h->guests[i]->received.load() < base[i] + more) return false;
        return true;
      },
      timeout_ms);
}

int ka_test_host_wait_pending(ka_test_host* h, unsigned devices, unsigned timeout_ms) {
  return wait_for(
      [&] {
        auto rows = abi::list_devices(*h->ctl_sys, h->ctl_fd);
        if (!rows || rows->size() != devices) return false;
        for (const auto& r : *rows)
          if (r.nr_pending == 0) return false;
        return true;
      },
      timeout_ms);
}

void ka_test_host_get_nic_stats(ka_test_host* h, unsigned nic, ka_test_nic_stats* out) {
  const auto s = h->plat->find_nic(nic_bdf(nic))->stats();
  const auto& g = *h->guests.at(nic);
  *out = {s.packets, s.drops, s.dma_errors, s.resets, g.received.load(), g.lost_seqs.load(), g.corrupted.load()};
}

void ka_test_host_get_stats(ka_test_host* h, ka_test_host_stats* out) {
  const auto c = h->plat->vtd().counters();
  *out = {};
  out->dma_faults = c.dma_faults;
  out->ir_faults = c.ir_faults;
  out->irq_no_cpu = c.irq_no_cpu;
  out->preserved_drained = h->kernel_stat(&kernel_stats::preserved_drained, "preserved_drained");
  out->spurious = h->kernel_stat(&kernel_stats::spurious, "spurious");
  out->device_resets = h->kernel_stat(&kernel_stats::device_resets, "device_resets");
  if (auto rows = abi::list_devices(*h->ctl_sys, h->ctl_fd)) {
    out->devices_not_running = static_cast<std::uint32_t>(rows->size());
    for (const auto& r : *rows) out->devices_ownerless += r.state == abi::device_state::ownerless;
  }
}

}  // extern "C"
