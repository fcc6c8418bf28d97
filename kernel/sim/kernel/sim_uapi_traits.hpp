// ioctl traits of the sim-only structs (sim_uapi.h), so the uapi dispatch
// engine serves them and the fuzzers and tests can name them.
#pragma once

#include "keepalive/abi/uapi.hpp"
#include "sim_uapi.h"

namespace keepalive::abi {
KEEPALIVE_IOCTL_TRAITS(ka_sim_pid, KA_SIM_CREATE_PID, KEEPALIVE_OFFSETOFEND(ka_sim_pid, out_pid_hpa), 0u, ((void)v, true))
KEEPALIVE_IOCTL_TRAITS(ka_sim_irq_bypass, KA_SIM_IRQ_BYPASS, KEEPALIVE_OFFSETOFEND(ka_sim_irq_bypass, __reserved),
                       KA_SIM_BYPASS_DISCONNECT, v.__reserved == 0)
}  // namespace keepalive::abi
