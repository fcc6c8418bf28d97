#!/usr/bin/env bash
# Two minivmm processes restart into each other over the keepalive-simd daemon:
# the new one prepares its VM first and waits on a FIFO; the old one boots the
# guest, streams, hands its state over and exits; the new one takes over and
# checks that the guest verified every packet. Exit 77 when KVM is unavailable.
# usage: cross_process_restart.sh KEEPALIVE_SIMD MINIVMM RATE
set -euo pipefail
simd=$1 minivmm=$2 rate=$3
dir=$(mktemp -d)
daemon_pid=""
new_pid=""
cleanup() {
  [ -n "$new_pid" ] && kill "$new_pid" 2>/dev/null || true
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$simd" --socket "$dir/simd.sock" --phys-mib 128 >"$dir/simd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$dir/simd.sock" ] && break; sleep 0.05; done
[ -S "$dir/simd.sock" ] || { echo "daemon did not start"; cat "$dir/simd.log"; exit 1; }
mkfifo "$dir/state"

"$minivmm" --daemon "$dir/simd.sock" --take-over "$dir/state" --rate "$rate" --seconds 1.5 --check --quiet \
  >"$dir/new.log" 2>&1 &
new_pid=$!
sleep 0.5  # let it prepare: its VM exists before the old VMM pauses

set +e
"$minivmm" --daemon "$dir/simd.sock" --handover-to "$dir/state" --rate "$rate" --seconds 1.5 --quiet
old_rc=$?
if [ $old_rc -ne 0 ]; then
  exec 3<>"$dir/state" && exec 3>&-  # unblock a VMM still waiting (O_RDWR never blocks)
fi
wait "$new_pid"
new_rc=$?
new_pid=""
set -e
cat "$dir/new.log"
[ $old_rc -eq 77 ] && exit 77
[ $old_rc -eq 0 ] || { echo "old VMM failed ($old_rc)"; exit 1; }
[ $new_rc -eq 0 ] || { echo "new VMM failed ($new_rc)"; exit 1; }
grep -q "CLEAN: every packet verified" "$dir/new.log"
