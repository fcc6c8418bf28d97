#include "fixture.hpp"

#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "nic_regs.h"
#include "sim_uapi.h"

namespace keepalive::transport_test {

// ------------------------------------------------------------------ programs

namespace {
std::vector<char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<char*> v;
  for (const auto& a : argv) v.push_back(const_cast<char*>(a.c_str()));
  v.push_back(nullptr);
  return v;
}
int decode_status(int st) {
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}
}  // namespace

run_result run_program(const std::vector<std::string>& argv) {
  int out[2], err[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  pid_t pid = -1;
  auto args = c_argv(argv);
  const int rc = ::posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  ::close(err[1]);
  REQUIRE(rc == 0);
  run_result r;
  pollfd p[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_pipes = 2;
  while (open_pipes > 0) {
    if (::poll(p, 2, 10000) <= 0) break;
    for (int i = 0; i < 2; ++i) {
      if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[4096];
      const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
      if (n <= 0) {
        ::close(p[i].fd);
        p[i].fd = -1;
        --open_pipes;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  for (auto& q : p)
    if (q.fd >= 0) ::close(q.fd);
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  r.exit_code = decode_status(st);
  return r;
}

std::unique_ptr<child> spawn_program(const std::vector<std::string>& argv) {
  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  pid_t pid = -1;
  auto args = c_argv(argv);
  const int rc = ::posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  REQUIRE(rc == 0);
  auto c = std::make_unique<child>();
  c->pid = pid;
  c->out_fd = out[0];
  return c;
}

child::~child() {
  if (pid > 0) signal_and_wait(SIGKILL);
  if (out_fd >= 0) ::close(out_fd);
}

std::optional<std::string> child::read_line(int timeout_ms) {
  std::string line;
  for (;;) {
    pollfd p{out_fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return std::nullopt;
    char ch;
    if (::read(out_fd, &ch, 1) != 1) return std::nullopt;
    if (ch == '\n') return line;
    line += ch;
  }
}

int child::signal_and_wait(int sig) {
  if (pid <= 0) return -1;
  ::kill(pid, sig);
  int st = 0;
  const pid_t r = ::waitpid(pid, &st, 0);
  pid = -1;
  return r < 0 ? -1 : decode_status(st);
}

// ------------------------------------------------------------------ daemon

daemon_fixture::daemon_fixture(sim::kernel_mode mode, bool posted, unsigned nics) {
  char tmpl[] = "/tmp/ka-transport-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  dir = tmpl;
  socket = dir + "/simd.sock";
  simd::server_config cfg;
  cfg.socket_path = socket;
  cfg.phys_mib = test_phys_mib;
  cfg.nics = nics;
  cfg.mode = mode;
  cfg.posted_interrupts = posted;
  auto s = simd::server::start(cfg);
  REQUIRE(s);
  srv = std::move(*s);
  runner = std::thread{[this] { srv->run(); }};
}

daemon_fixture::~daemon_fixture() {
  // Stop the wire before the host goes away (as the in-process fixtures do).
  for (const auto& f : srv->hardware().functions())
    if (auto* n = srv->hardware().find_nic(f->address())) n->mmio_write(0, KA_NIC_RATE_PPS, 8, 0);
  srv->stop();
  runner.join();
  srv.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::unique_ptr<sim_transport> daemon_fixture::connect() const {
  auto t = sim_transport::connect(socket);
  REQUIRE(t);
  return std::move(*t);
}

// ------------------------------------------------------------------ guest

std::byte* remote_guest::map(int phys_fd, std::uint64_t guest_start, std::uint64_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, phys_fd, static_cast<off_t>(guest_start));
  REQUIRE(p != MAP_FAILED);
  return static_cast<std::byte*>(p);
}

remote_guest::remote_guest(int phys_fd, std::uint64_t guest_start, const sim::testing::guest_layout& layout)
    : guest{map(phys_fd, guest_start, layout.ram_bytes), layout, {}}, bytes_{layout.ram_bytes} {}

remote_guest::~remote_guest() {
  stop();  // the consumer thread reads this mapping
  ::munmap(ram(), bytes_);
}

// ------------------------------------------------------------------ vmm

std::uint64_t remote_vmm::map_ram(sim_transport& t, std::uint64_t bytes) {
  // Guest RAM is this VMM's own mapping of the memfd; MAP_DMA gets its pointer,
  // as against real VFIO. 0 (no mapping) makes the open fail with ENOMEM.
  return reinterpret_cast<std::uintptr_t>(t.map_phys(t.guest_start(), bytes));
}

remote_vmm::remote_vmm(std::unique_ptr<sim_transport> t, remote_guest& g, const sim::testing::guest_layout& layout,
                       bdf nic)
    : t_{std::move(t)}, guest_{g}, flow_{*t_, nic, layout.ram_bytes, map_ram(*t_, layout.ram_bytes), g.irq_fd()} {}

status remote_vmm::cold_start(std::uint64_t rate_pps, std::uint32_t irq_mod_pkts, std::uint32_t irq_mod_usec) {
  if (auto st = flow_.open_device(std::nullopt); !st) return st;
  guest_.attach(access());
  return flow_.start_nic(guest_, rate_pps, irq_mod_pkts, irq_mod_usec);
}

status remote_vmm::reclaim(const std::optional<token>& t) {
  if (auto st = flow_.open_device(t); !st) return st;
  if (auto st = flow_.connect_vector(); !st) return st;
  guest_.attach(access());
  if (t) return leave_keepalive(*t);
  return {};
}

void remote_vmm::kill() {
  guest_.detach();
  t_.reset();
}

}  // namespace keepalive::transport_test
