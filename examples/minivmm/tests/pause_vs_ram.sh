#!/usr/bin/env bash
# Guest pause for a 1 GiB and an 8 GiB guest (RAM slot sizes; sparse memfd):
# both runs must be clean; the pauses are REPORTED, with their ratio, never
# asserted (performance on a shared, emulated host is not a unit-test result).
#   pause_vs_ram.sh KEEPALIVE_SIMD KEEPALIVECTL MINIVMM [RESTARTS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
restarts=${4:-10}
declare -A med p99
for mib in 1024 8192; do
  set +e
  out=$(RAM_MIB=$mib STAGE1=$restarts STAGE2=0 SLICE=0.3 RATE=${RATE:-3000} bash "$here/restart_cycles.sh" "$1" "$2" "$3")
  rc=$?
  set -e
  [ $rc -eq 77 ] && { echo "SKIP: no /dev/kvm"; exit 77; }
  [ $rc -eq 0 ] || { echo "$out"; echo "FAIL: the $mib MiB run was not clean"; exit 1; }
  json=$(tail -1 <<<"$out")
  echo "$mib MiB: $json"
  med[$mib]=$(grep -o '"pause_ms_median":[0-9.]*' <<<"$json" | cut -d: -f2)
  p99[$mib]=$(grep -o '"pause_ms_p99":[0-9.]*' <<<"$json" | cut -d: -f2)
done
ratio=$(awk -v a="${med[1024]}" -v b="${med[8192]}" 'BEGIN{ if (a > 0) printf "%.2f", b / a; else print "n/a" }')
echo "pause 1GiB median ${med[1024]} ms (p99 ${p99[1024]}), 8GiB median ${med[8192]} ms (p99 ${p99[8192]}); ratio 8GiB/1GiB $ratio (reported, not asserted)"
