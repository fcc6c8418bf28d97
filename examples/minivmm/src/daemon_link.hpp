// host_link over the keepalive-simd daemon (include/keepalive/sim_transport.hpp):
// the VMM is a client process of the simulated host, so an old and a new VMM
// can be two real processes and the host survives either one exiting.
#pragma once

#include <memory>
#include <string_view>

#include "host_link.hpp"

namespace keepalive::minivmm {

// Connects to the daemon at `socket` (empty: the transport's default path).
[[nodiscard]] result<std::unique_ptr<host_link>> connect_daemon(std::string_view socket);

}  // namespace keepalive::minivmm
