// Transport test support: a keepalive-simd server in-process on a temporary
// socket, a guest stand-in that works on raw guest RAM (the client's own
// mapping of the physical-memory memfd) and reaches its NIC only through a
// register read/write function, and a VMM that drives the NIC over a
// sim_transport exactly as a VMM drives real VFIO.
#pragma once

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "keepalive/abi/ops.hpp"
#include "keepalive/sim_transport.hpp"
#include "server.hpp"
#include "sim_host.hpp"

namespace keepalive::transport_test {

inline const bdf nic0{0, 0, 4, 0};
inline constexpr std::uint64_t test_phys_mib = 96;  // 64 MiB kernel + 32 MiB guest area
inline constexpr std::uint64_t test_rate_pps = 50000;

// A deep ring (650 ms at test_rate_pps): a loaded machine (ctest -j, two
// daemons, builds) must not turn scheduling delays into drops.
[[nodiscard]] inline sim::testing::guest_layout deep_ring_layout() {
  sim::testing::guest_layout l;
  l.ring_entries = 32768;  // descriptors [0x10000, 0x90000), buffers [1 MiB, 9 MiB) of 16 MiB
  return l;
}

struct daemon_fixture {
  explicit daemon_fixture(sim::kernel_mode mode = sim::kernel_mode::keepalive, bool posted = true, unsigned nics = 1);
  ~daemon_fixture();
  daemon_fixture(const daemon_fixture&) = delete;
  daemon_fixture& operator=(const daemon_fixture&) = delete;

  [[nodiscard]] std::unique_ptr<sim_transport> connect() const;
  [[nodiscard]] sim::nic_stats nic() { return srv->hardware().find_nic(nic0)->stats(); }
  [[nodiscard]] sim::iommu_counters iommu() { return srv->hardware().vtd().counters(); }
  // Wait until the daemon has finished with every connection but `n` (a closed
  // socket is noticed asynchronously). Connections are accepted in order: a
  // connection served after another was made has seen that one accepted.
  void wait_for_connections(std::size_t n) {
    std::size_t live = srv->live_connections();
    for (int i = 0; i < 1000 && live != n; ++i) {
      run_for(2);
      live = srv->live_connections();
    }
    REQUIRE(live == n);
  }
  // Polls `done` (every 2 ms) until it holds or timeout_ms passed: timing-
  // independent waits for things the device does by itself.
  template <typename Pred>
  static bool eventually(Pred done, int timeout_ms = 5000) {
    for (int waited = 0;; waited += 2) {
      if (done()) return true;
      if (waited >= timeout_ms) return false;
      run_for(2);
    }
  }
  static void run_for(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds{ms}); }

  std::string dir, socket;
  std::unique_ptr<simd::server> srv;
  std::thread runner;
};

// Run a program to completion, capturing its output.
struct run_result {
  int exit_code = -1;
  std::string out, err;
};
run_result run_program(const std::vector<std::string>& argv);

// A child process whose stdout is a pipe (for a daemon started as a binary).
struct child {
  int pid = -1;
  int out_fd = -1;
  ~child();
  // Reads stdout until a full line arrives (or timeout): the line without '\n'.
  std::optional<std::string> read_line(int timeout_ms);
  int signal_and_wait(int sig);  // exit status (or 128 + signal)
};
std::unique_ptr<child> spawn_program(const std::vector<std::string>& argv);

using sim::testing::device_access;

// The guest stand-in (kernel/sim/testing) over the test's own mapping of the
// memfd: it outlives every VMM connection, as a real guest outlives its VMM.
class remote_guest final : public sim::testing::guest {
 public:
  remote_guest(int phys_fd, std::uint64_t guest_start, const sim::testing::guest_layout& layout);
  ~remote_guest() override;

 private:
  static std::byte* map(int phys_fd, std::uint64_t guest_start, std::uint64_t bytes);
  std::uint64_t bytes_;
};

// A VMM over the daemon: the shared VFIO flow (kernel/sim/testing) over its
// own connection, with guest RAM mapped from the memfd the daemon handed it.
class remote_vmm {
 public:
  remote_vmm(std::unique_ptr<sim_transport> t, remote_guest& g, const sim::testing::guest_layout& layout,
             bdf nic = nic0);
  ~remote_vmm() { guest_.detach(); }
  remote_vmm(const remote_vmm&) = delete;
  remote_vmm& operator=(const remote_vmm&) = delete;
  status cold_start(std::uint64_t rate_pps, std::uint32_t irq_mod_pkts = 16, std::uint32_t irq_mod_usec = 200);
  status reclaim(const std::optional<token>& t);
  result<abi::enter_reply> enter_keepalive(const token& t) { return abi::keepalive_enter(*t_, flow_.device_fd(), t); }
  status leave_keepalive(const token& t) { return abi::keepalive_leave(*t_, flow_.device_fd(), t); }
  // The VMM dies: its socket closes with nothing closed first (SIGKILL).
  void kill();
  [[nodiscard]] sim_transport& sys() { return *t_; }
  [[nodiscard]] int device_fd() const noexcept { return flow_.device_fd(); }
  status write_reg(std::uint64_t off, std::uint64_t v) { return flow_.write_reg(off, v); }
  result<std::uint64_t> read_reg(std::uint64_t off) { return flow_.read_reg(off); }
  [[nodiscard]] device_access access() { return flow_.access(); }

 private:
  static std::uint64_t map_ram(sim_transport& t, std::uint64_t bytes);
  std::unique_ptr<sim_transport> t_;
  remote_guest& guest_;
  sim::testing::vfio_flow flow_;
};

}  // namespace keepalive::transport_test
