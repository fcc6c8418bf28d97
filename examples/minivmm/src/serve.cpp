#include "serve.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

#include "harness.hpp"
#include "qmp.hpp"

namespace keepalive::minivmm {
namespace {

double us(std::uint64_t ns) { return static_cast<double>(ns) / 1e3; }

std::string_view state_name(abi::device_state s) {
  switch (static_cast<std::uint32_t>(s)) {
    case VFIO_KEEPALIVE_STATE_RUNNING: return "running";
    case VFIO_KEEPALIVE_STATE_KEPT_ALIVE: return "kept_alive";
    case VFIO_KEEPALIVE_STATE_OWNERLESS: return "ownerless";
    case VFIO_KEEPALIVE_STATE_RECLAIMED: return "reclaimed";
    case VFIO_KEEPALIVE_STATE_FROZEN: return "frozen";
    case VFIO_KEEPALIVE_STATE_RESTORED: return "restored";
    case VFIO_KEEPALIVE_STATE_ERROR: return "error";
    default: return "invalid";
  }
}

class server {
 public:
  server(std::unique_ptr<vmm> v, const serve_config& cfg) : v_{std::move(v)}, cfg_{cfg} {
    ignore_shared_ = cfg.ignore_shared;
  }

  int run(std::span<const std::byte> image) {
    if (cfg_.qmp_fd >= 0) {
      qmp_ = qmp_server::adopt(cfg_.qmp_fd, cfg_.qmp_path);
    } else {
      auto q = qmp_server::listen(cfg_.qmp_path);
      if (!q) return fail("qmp", q.err());
      qmp_ = std::move(*q);
    }
    if (auto st = start(image); !st) return fail("start", st.err());
    qmp_->start([this](const json::rows& r) { return handle(r); });
    std::unique_lock lk{mu_};
    cv_.wait(lk, [this] { return done_; });
    lk.unlock();
    qmp_->stop();
    return exit_code_;
  }

 private:
  static int fail(std::string_view what, const error& e) {
    fmt::print(stderr, "minivmm: {}: {}\n", what, e.message());
    return 1;
  }

  status start(std::span<const std::byte> image) {
    if (cfg_.incoming_fd >= 0 || !cfg_.incoming_path.empty()) {
      fmt::print("minivmm: prepared (VM, RAM slot, vCPU, irqfd) in {:.0f} us; waiting for the state\n",
                 us(v_->timing().prepare_ns));
      std::fflush(stdout);
      int fd = cfg_.incoming_fd;
      if (fd < 0) fd = ::open(cfg_.incoming_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return {errc_from_errno(errno), "open " + cfg_.incoming_path};
      (void)::lseek(fd, 0, SEEK_SET);  // a memfd handed across exec; -ESPIPE on a FIFO is fine
      auto state = read_snapshot(fd);
      ::close(fd);
      if (!state) return state.err();
      const token t = state->owner;
      if (auto st = v_->take_over(std::move(*state)); !st) return st;
      last_ = v_->timing();
      // keepalive stays on across restarts, with the token it came with
      if (!t.is_nil())
        if (auto st = v_->arm_keepalive(t); !st) return st;
      measure_resume_gap(*v_, last_);
      restarted_ = true;
      fmt::print("minivmm: took over: pause {:.0f} us (restore {:.0f}, reclaim {:.0f}); guest interrupt gap {:.0f} us\n",
                 us(last_.pause_ns), us(last_.restore_ns), us(last_.reclaim_ns),
                 tsc_to_us(last_.guest_gap_tsc, v_->tsc_khz()));
      return {};
    }
    if (cfg_.reboot) {
      if (auto st = v_->reboot_reclaim(image, *cfg_.reboot); !st) return st;
      rebooted_ = true;
    } else if (auto st = v_->boot(image); !st) {
      return st;
    }
    if (auto st = wait_guest_running(*v_, 20000); !st) return st;
    if (auto st = v_->set_rate(cfg_.rate); !st) return st;
    const std::optional<token> arm = cfg_.reboot ? cfg_.reboot : cfg_.arm;
    if (arm)
      if (auto st = v_->arm_keepalive(*arm); !st) return st;
    fmt::print("minivmm: guest running{}, wire {} packets/s\n", rebooted_ ? " (rebooted on the same RAM)" : "", cfg_.rate);
    std::fflush(stdout);
    return {};
  }

  qmp_reply handle(const json::rows& r) {
    const std::string& cmd = *json::find(r, "execute");
    if (cmd == "query-status") return {query_status(), {}};
    if (cmd == "set-keepalive") return {set_keepalive(r), {}};
    if (cmd == "migrate-set-capabilities") return {set_capabilities(r), {}};
    if (cmd == "restart") return restart(r);
    if (cmd == "x-set-rate") {
      const auto* pps = json::find(r, "arguments.pps");
      std::uint64_t n = 0;
      if (!pps || std::sscanf(pps->c_str(), "%lu", &n) != 1) return {qmp_error("GenericError", "arguments.pps"), {}};
      if (auto st = v_->set_rate(n); !st) return {qmp_error("GenericError", st.err().message()), {}};
      return {qmp_return(), {}};
    }
    if (cmd == "x-drain") {
      auto d = drain(*v_, 10000);
      if (!d) return {qmp_error("GenericError", d.err().message()), {}};
      return {qmp_return(fmt::format("\"drained\":{}", *d)), {}};
    }
    if (cmd == "quit") {
      return {qmp_return(), [this] {
                std::lock_guard lk{mu_};
                done_ = true;
                cv_.notify_all();
              }};
    }
    return {qmp_error("CommandNotFound", fmt::format("The command {} has not been found", cmd)), {}};
  }

  std::string query_status() {
    const auto c = v_->counters();
    std::string s = fmt::format("\"status\":\"{}\",\"pid\":{},\"ram-mib\":{},", handed_over_ ? "postmigrate" : "running",
                                ::getpid(), v_->ram_bytes() >> 20);
    s += fmt::format(
        "\"guest\":{{\"state\":{},\"received\":{},\"lost\":{},\"gaps\":{},\"reordered\":{},\"corrupted\":{},"
        "\"interrupts\":{},\"spurious\":{},\"faults\":{}}},",
        c.state, c.received, c.lost, c.gaps, c.reordered, c.corrupted, c.interrupts, c.spurious, c.fault_count);
    if (v_->has_device()) {
      auto n = read_nic(*v_);
      auto ds = v_->device_status();
      auto cmd = v_->pci_command();
      if (n)
        s += fmt::format("\"nic\":{{\"packets\":{},\"drops\":{},\"irqs\":{},\"dma-errors\":{},\"bus-master\":{}}},",
                         n->packets, n->drops, n->irqs, n->dma_errors, cmd ? ((*cmd & 4) != 0) : false);
      s += fmt::format("\"device-state\":\"{}\",", ds ? state_name(ds->state) : "unknown");
    }
    const auto t = v_->armed_token();
    s += fmt::format("\"keepalive\":{{\"enabled\":{},\"token\":\"{}\"}},\"x-ignore-shared\":{},\"rebooted\":{}",
                     t.has_value(), t ? t->to_string() : "", ignore_shared_, rebooted_);
    if (restarted_)
      s += fmt::format(",\"last-restart\":{{\"pause-us\":{:.1f},\"restore-us\":{:.1f},\"reclaim-us\":{:.1f},"
                       "\"guest-gap-us\":{:.1f},\"resume-interrupt\":{}}}",
                       us(last_.pause_ns), us(last_.restore_ns), us(last_.reclaim_ns),
                       tsc_to_us(last_.guest_gap_tsc, v_->tsc_khz()), last_.guest_resumed);
    return qmp_return(s);
  }

  std::string set_keepalive(const json::rows& r) {
    const auto* en = json::find(r, "arguments.enable");
    if (!en || (*en != "true" && *en != "false")) return qmp_error("GenericError", "arguments.enable: true or false");
    if (*en == "false") {
      if (auto st = v_->disarm_keepalive(); !st) return qmp_error("GenericError", st.err().message());
      return qmp_return();
    }
    const auto* tok = json::find(r, "arguments.token");
    const auto t = tok ? token::parse(*tok) : std::nullopt;
    if (!t || t->is_nil()) return qmp_error("GenericError", "arguments.token: a non-nil UUID");
    if (auto st = v_->arm_keepalive(*t); !st) return qmp_error("GenericError", st.err().message());
    return qmp_return();
  }

  std::string set_capabilities(const json::rows& r) {
    bool any = false;
    for (std::size_t i = 0;; ++i) {
      const auto* name = json::find(r, fmt::format("arguments.capabilities[{}].capability", i));
      const auto* state = json::find(r, fmt::format("arguments.capabilities[{}].state", i));
      if (!name) break;
      if (*name != "x-ignore-shared") return qmp_error("GenericError", fmt::format("capability {} is not supported", *name));
      if (!state || (*state != "true" && *state != "false"))
        return qmp_error("GenericError", "capability state: true or false");
      ignore_shared_ = *state == "true";
      any = true;
    }
    if (!any) return qmp_error("GenericError", "arguments.capabilities: a non-empty list");
    return qmp_return();
  }

  qmp_reply restart(const json::rows& r) {
    const auto* mode = json::find(r, "arguments.mode");
    if (!mode || (*mode != "exec" && *mode != "handover"))
      return {qmp_error("GenericError", "arguments.mode: exec or handover"), {}};
    if (handed_over_ || !v_->has_device()) return {qmp_error("GenericError", "nothing to hand over"), {}};
    if (!ignore_shared_)
      return {qmp_error("GenericError", "x-ignore-shared is off: guest RAM would have to be copied; refusing"), {}};
    const auto t = v_->armed_token();
    if (!t) return {qmp_error("GenericError", "keepalive is not enabled (set-keepalive)"), {}};
    if (*mode == "exec") {
      if (!cfg_.can_exec) return {qmp_error("GenericError", "exec needs a host that outlives this process (--daemon)"), {}};
      const int fd = ::memfd_create("minivmm-state", 0);  // survives exec
      if (fd < 0) return {qmp_error("GenericError", std::strerror(errno)), {}};
      auto state = v_->handover(*t);
      if (!state) {
        ::close(fd);
        return {qmp_error("GenericError", state.err().message()), {}};
      }
      if (auto st = write_snapshot(fd, *state); !st) {
        fmt::print(stderr, "minivmm: {}\n", st.err().message());
        std::_Exit(1);
      }
      handed_over_ = true;
      const int qfd = qmp_->release_for_exec();
      return {qmp_return("\"mode\":\"exec\""), [this, fd, qfd] { exec_self(fd, qfd); }};
    }
    const auto* path = json::find(r, "arguments.state-path");
    if (!path || path->empty()) return {qmp_error("GenericError", "arguments.state-path"), {}};
    // Opened before the pause: a FIFO blocks here until the new VMM is waiting on it.
    const int fd = ::open(path->c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return {qmp_error("GenericError", fmt::format("open {}: {}", *path, std::strerror(errno))), {}};
    auto state = v_->handover(*t);
    if (!state) {
      ::close(fd);
      return {qmp_error("GenericError", state.err().message()), {}};
    }
    const auto st = write_snapshot(fd, *state);
    ::close(fd);
    if (!st) return {qmp_error("GenericError", st.err().message()), {}};
    handed_over_ = true;
    const auto& tm = v_->timing();
    return {qmp_return(fmt::format("\"mode\":\"handover\",\"stop-us\":{:.1f},\"enter-us\":{:.1f},\"save-us\":{:.1f}",
                                   us(tm.stop_ns), us(tm.enter_ns), us(tm.save_ns))),
            {}};
  }

  [[noreturn]] void exec_self(int state_fd, int qmp_fd) {
    std::vector<std::string> args;
    const auto& in = cfg_.argv;
    for (std::size_t i = 0; i < in.size(); ++i) {
      const std::string& a = in[i];
      if (a == "--qmp" || a == "--qmp-fd" || a == "--incoming" || a == "--incoming-fd" || a == "--keepalive-token" ||
          a == "--reclaim-reboot") {
        ++i;
        continue;
      }
      if (a == "--x-ignore-shared") continue;
      args.push_back(a);
    }
    args.insert(args.end(), {"--qmp", cfg_.qmp_path, "--qmp-fd", std::to_string(qmp_fd), "--incoming-fd",
                             std::to_string(state_fd), "--x-ignore-shared"});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::fflush(stdout);
    std::fflush(stderr);
    ::execv("/proc/self/exe", argv.data());
    fmt::print(stderr, "minivmm: exec: {}\n", std::strerror(errno));
    std::_Exit(1);
  }

  std::unique_ptr<vmm> v_;
  serve_config cfg_;
  std::unique_ptr<qmp_server> qmp_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  int exit_code_ = 0;
  bool ignore_shared_ = false, handed_over_ = false, restarted_ = false, rebooted_ = false;
  restart_timing last_;
};

}  // namespace

int serve(std::unique_ptr<vmm> v, const serve_config& cfg, std::span<const std::byte> image) {
  server s{std::move(v), cfg};
  return s.run(image);
}

}  // namespace keepalive::minivmm
