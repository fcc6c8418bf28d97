// The keepalive-simd executable: options, the ready line, serving, refusing a
// socket that is in use, graceful shutdown on SIGTERM/SIGINT.
#include <fcntl.h>
#include <linux/vfio_keepalive.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "fixture.hpp"
#include "keepalive/detail/json.hpp"

#ifndef KEEPALIVE_SIMD_BIN
#error "KEEPALIVE_SIMD_BIN is set by kernel/sim/daemon/CMakeLists.txt"
#endif

using namespace keepalive;
using namespace keepalive::transport_test;

namespace {
struct temp_dir {
  temp_dir() {
    char tmpl[] = "/tmp/ka-simd-bin-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};

bool exists(const std::string& p) {
  struct stat sb {};
  return ::lstat(p.c_str(), &sb) == 0;
}
}  // namespace

TEST_CASE("keepalive-simd: ready line, serves, SIGTERM shuts it down and removes the socket") {
  temp_dir dir;
  const std::string sock = dir.path + "/simd.sock";
  auto daemon = spawn_program({KEEPALIVE_SIMD_BIN, "--socket", sock, "--phys-mib", "8192", "--nics", "2", "--no-posted"});
  const auto ready = daemon->read_line(20000);
  REQUIRE(ready);
  CHECK(*ready == "keepalive-simd ready " + sock);
  CHECK(exists(sock));

  auto t = sim_transport::connect(sock);
  REQUIRE(t);
  CHECK((*t)->host().phys_bytes == 8192ull << 20);  // sparse: 8 GiB costs nothing
  CHECK((*t)->host().functions.size() == 2);
  CHECK_FALSE((*t)->host().posted_interrupts);
  auto ctl = (*t)->open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  REQUIRE(ctl);
  auto info = abi::get_info(**t, *ctl);
  REQUIRE(info);
  CHECK((info->caps & VFIO_KEEPALIVE_CAP_POSTED_INTR) == 0);
  // The last GiB of an 8 GiB memfd is reachable through the mapping.
  void* last = (*t)->map_phys((8192ull << 20) - 4096, 4096);
  REQUIRE(last != nullptr);
  auto* p = static_cast<volatile std::uint64_t*>(last);
  p[0] = 42;
  const std::uint64_t v = p[0];
  CHECK(v == 42);

  // A second daemon on the same socket refuses to start.
  auto second = run_program({KEEPALIVE_SIMD_BIN, "--socket", sock, "--phys-mib", "96"});
  CHECK(second.exit_code == 1);
  CHECK(second.err.find("is served by a running daemon") != std::string::npos);

  CHECK(daemon->signal_and_wait(SIGTERM) == 0);  // with a client still connected
  CHECK_FALSE(exists(sock));
  CHECK(abi::get_info(**t, *ctl).code() == errc::io);  // the host is gone
}

TEST_CASE("keepalive-simd: a stale socket file is replaced, SIGINT, bad options") {
  temp_dir dir;
  const std::string sock = dir.path + "/simd.sock";
  {
    // A socket file nobody listens on (a daemon that was SIGKILLed).
    const int s = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
    REQUIRE(::bind(s, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
    ::close(s);
    REQUIRE(exists(sock));
  }
  auto daemon = spawn_program({KEEPALIVE_SIMD_BIN, "--socket", sock, "--phys-mib", "96", "--mode", "baseline"});
  const auto ready = daemon->read_line(20000);
  REQUIRE(ready);
  CHECK(*ready == "keepalive-simd ready " + sock);
  auto t = sim_transport::connect(sock);
  REQUIRE(t);
  CHECK((*t)->host().baseline);
  auto stats = (*t)->stats_json();
  REQUIRE(stats);
  CHECK(detail::json::parse(*stats).has_value());
  CHECK(daemon->signal_and_wait(SIGINT) == 0);
  CHECK_FALSE(exists(sock));

  const std::string plain = dir.path + "/plain";
  { std::ofstream{plain} << "x"; }
  for (const auto& args : std::vector<std::vector<std::string>>{
           {KEEPALIVE_SIMD_BIN, "--mode", "other"},
           {KEEPALIVE_SIMD_BIN, "--phys-mib", "abc"},
           {KEEPALIVE_SIMD_BIN, "--phys-mib", "97", "--socket", dir.path + "/x.sock"},
           {KEEPALIVE_SIMD_BIN, "--phys-mib", "64", "--socket", dir.path + "/x.sock"},
           {KEEPALIVE_SIMD_BIN, "--nics", "33"},
           {KEEPALIVE_SIMD_BIN, "--socket", plain, "--phys-mib", "96"},
           {KEEPALIVE_SIMD_BIN, "--bogus"}}) {
    auto r = run_program(args);
    CAPTURE(args.back());
    CAPTURE(r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.err.starts_with("keepalive-simd: "));
  }
  CHECK(exists(plain));  // never removed: it is not a socket
}
