#!/usr/bin/env bash
# The keepalive demo on real KVM: a mini-VMM (examples/minivmm) runs a tiny
# guest that verifies every packet a passed-through (simulated) NIC streams
# into its RAM, while the VMM restarts 20 times (alternating exec in place and
# quit + start of a new process) and the host kexecs twice (stage 2), the
# device never stopping. Counts come from the guest's counters page and the
# platform's oracles (keepalivectl stats), not from the VMM.
# The last line of output is one JSON object. Exit 0 only if nothing was lost.
#   DEMO_RATE (packets/s, default 3000)  DEMO_RAM_MIB (default 1024)
#   DEMO_STAGE1 (20)  DEMO_STAGE2 (2)  DEMO_SLICE (seconds between restarts, 1)
#   DEMO_JOBS (build parallelism, 2)  DEMO_BUILD_DIR (build/demo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

build=${DEMO_BUILD_DIR:-$KEEPALIVE_ROOT/build/demo}

if ! { exec 9<>/dev/kvm; } 2>/dev/null; then
  echo "demo: /dev/kvm cannot be opened (no KVM on this machine, or no permission): the demo needs real KVM" >&2
  echo '{"kvm":false,"error":"/dev/kvm unavailable"}'
  exit 1
fi
exec 9>&-

ensure_packages "${KEEPALIVE_BASE_PACKAGES[@]}" binutils
log "configuring and building keepalive-simd, keepalivectl, minivmm (Release) in $build"
mkdir -p "$build"
cmake -S "$KEEPALIVE_ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEPALIVE_BUILD_TESTS=OFF \
  -DKEEPALIVE_BUILD_BENCH=OFF -DKEEPALIVE_BUILD_EXAMPLES=ON >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j "${DEMO_JOBS:-2}" --target keepalive-simd keepalivectl minivmm >"$build.build.log" 2>&1 ||
  { tail -50 "$build.build.log"; exit 1; }
log "running: ${DEMO_STAGE1:-20} stage-1 restarts (exec / quit+start alternating), ${DEMO_STAGE2:-2} stage-2 kexec cycles"
RATE=${DEMO_RATE:-3000} RAM_MIB=${DEMO_RAM_MIB:-1024} STAGE1=${DEMO_STAGE1:-20} STAGE2=${DEMO_STAGE2:-2} \
  SLICE=${DEMO_SLICE:-1} KEEP=${DEMO_KEEP:-} \
  exec bash "$KEEPALIVE_ROOT/examples/minivmm/tests/restart_cycles.sh" \
  "$build/kernel/sim/daemon/keepalive-simd" "$build/tools/keepalivectl/keepalivectl" "$build/examples/minivmm/minivmm"
