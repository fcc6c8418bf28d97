// keepalive-simd: the simulated host as a daemon (wire.hpp describes the protocol).
#include <signal.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

#include "server.hpp"
#include "wire.hpp"

namespace {

constexpr const char* usage =
    "usage: keepalive-simd [--socket PATH] [--phys-mib N] [--nics N] [--mode keepalive|baseline] [--no-posted]\n"
    "  --socket PATH   listen here (default $KEEPALIVE_SIMD_SOCKET or /run/keepalive-simd.sock)\n"
    "  --phys-mib N    physical memory in MiB, even (default 1088: 64 MiB kernel + 1 GiB guest RAM; sparse)\n"
    "  --nics N        streaming NICs at 0000:00:04.0, 0000:00:05.0, ... (default 1)\n"
    "  --mode M        keepalive (default) or baseline (an unpatched kernel)\n"
    "  --no-posted     a platform without VT-d posted interrupts\n";

bool parse_number(std::string_view s, std::uint64_t& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}

int fail(const std::string& what) {
  std::fprintf(stderr, "keepalive-simd: %s\n%s", what.c_str(), usage);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace keepalive;
  simd::server_config cfg;
  if (const char* env = std::getenv(simd::wire::socket_env); env && *env) cfg.socket_path = env;
  else cfg.socket_path = simd::wire::default_socket_path;

  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&](std::string_view& out) {
      if (i + 1 >= argc) return false;
      out = argv[++i];
      return true;
    };
    std::string_view v;
    std::uint64_t n = 0;
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    } else if (a == "--socket") {
      if (!value(v) || v.empty()) return fail("--socket needs a path");
      cfg.socket_path = std::string{v};
    } else if (a == "--phys-mib") {
      if (!value(v) || !parse_number(v, n) || n == 0) return fail("--phys-mib needs a number");
      cfg.phys_mib = n;
    } else if (a == "--nics") {
      if (!value(v) || !parse_number(v, n) || n > simd::wire::max_functions) return fail("--nics needs a number <= 32");
      cfg.nics = static_cast<unsigned>(n);
    } else if (a == "--mode") {
      if (!value(v)) return fail("--mode needs keepalive or baseline");
      if (v == "keepalive") cfg.mode = sim::kernel_mode::keepalive;
      else if (v == "baseline") cfg.mode = sim::kernel_mode::baseline;
      else return fail("--mode needs keepalive or baseline");
    } else if (a == "--no-posted") {
      cfg.posted_interrupts = false;
    } else {
      return fail("unknown argument " + std::string{a});
    }
  }

  // Every thread inherits the mask: SIGTERM/SIGINT are taken by sigwait below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  auto srv = simd::server::start(cfg);
  if (!srv) {
    std::fprintf(stderr, "keepalive-simd: %s\n", srv.err().message().c_str());
    return 1;
  }
  std::printf("keepalive-simd ready %s\n", cfg.socket_path.c_str());
  std::fflush(stdout);

  std::thread runner{[&] { (*srv)->run(); }};
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (*srv)->stop();
  runner.join();
  srv->reset();  // drops connections, shuts the kernel down, removes the socket
  return 0;
}
