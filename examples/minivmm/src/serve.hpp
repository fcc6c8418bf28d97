// `minivmm --qmp`: a long-running VMM driven through the QMP-like socket
// (qmp.hpp). Commands: qmp_capabilities, query-status, set-keepalive,
// migrate-set-capabilities (x-ignore-shared), restart (mode exec | handover),
// quit, and x-set-rate / x-drain (the link partner, for tests and the demo).
//
// restart mode "exec": the running VMM hands over (pause, keepalive, KVM
// state), writes the state into a memfd, clears FD_CLOEXEC on it and on the
// QMP listening socket and execs /proc/self/exe with --incoming-fd and
// --qmp-fd: the new image prepares its VM, takes over, and serves the same
// socket (connections made meanwhile wait in the backlog).
// restart mode "handover": the state goes to state-path (a FIFO a new VMM
// process already prepared behind, or a file read after a stage-2 kexec); the
// VMM stays, paused ("postmigrate"), until quit.
// Guest RAM is never part of the state: x-ignore-shared must be on.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "keepalive/types.hpp"
#include "vmm.hpp"

namespace keepalive::minivmm {

struct serve_config {
  std::string qmp_path;
  int qmp_fd = -1;               // inherited listening socket (exec)
  std::string incoming_path;     // take over from the state at this path
  int incoming_fd = -1;          // ... or in this inherited fd (exec)
  std::optional<token> arm;      // set-keepalive at start
  std::optional<token> reboot;   // reclaim with this token and reboot the guest (its VMM died)
  bool ignore_shared = false;
  bool can_exec = false;         // the device host outlives this process (daemon)
  std::uint64_t rate = 0;        // wire rate set at a cold boot
  std::vector<std::string> argv; // this process's command line (exec)
};

// Runs until quit. Returns the process exit status.
[[nodiscard]] int serve(std::unique_ptr<vmm> v, const serve_config& cfg, std::span<const std::byte> image);

}  // namespace keepalive::minivmm
