#!/usr/bin/env bash
# VMM restart cycles on real KVM over keepalive-simd, verified by the guest:
# the body of scripts/demo.sh and of the minivmm restart tests.
#   restart_cycles.sh KEEPALIVE_SIMD KEEPALIVECTL MINIVMM
# Environment: RATE (packets/s, 3000), RAM_MIB (guest RAM, 1024), STAGE1
# (restarts, 20), STAGE2 (kexec cycles, 2), SLICE (seconds between restarts,
# 1), MODES (alternate | exec | handover), KEEP (keep the temp dir).
# Stage 1 alternates exec in place (odd) and quit + start (even). Counts come
# from the guest's counters page and the platform (keepalivectl stats).
# Prints one line per cycle, a summary table and, last, one JSON object.
# Exit 0 clean, 1 not clean or failed, 77 no /dev/kvm.
set -euo pipefail
simd=$1 ctl=$2 minivmm=$3
rate=${RATE:-3000}
ram_mib=${RAM_MIB:-1024}
stage1=${STAGE1:-20}
stage2=${STAGE2:-2}
slice=${SLICE:-1}
modes=${MODES:-alternate}
log() { printf '[keepalive] %s\n' "$*" >&2; }
if ! { exec 9<>/dev/kvm; } 2>/dev/null; then
  echo "restart_cycles: SKIP: /dev/kvm cannot be opened"
  exit 77
fi
exec 9>&-

dir=$(mktemp -d /tmp/minivmm-restarts.XXXXXX)
sock=$dir/simd.sock
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
die() {
  echo "restart_cycles: $*" >&2
  local f
  for f in "$dir"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -5 "$f"; } >&2; done
  printf '{"error":%s,"clean":false,"kvm":true}\n' "\"${*//\"/\'}\""
  exit 1
}

# jget JSON KEY: the first value of "KEY" (numbers, booleans, strings unquoted).
jget() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2- | tr -d '"'; }
qmp() { "$minivmm" --qmp-call "$1" "$2"; }
wait_socket() { for _ in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done; return 1; }

phys_mib=$(((ram_mib + 64 + 1) / 2 * 2))
"$simd" --socket "$sock" --phys-mib "$phys_mib" >"$dir/simd.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q "ready" "$dir/simd.log" && break; sleep 0.05; done
grep -q "ready" "$dir/simd.log" || die "keepalive-simd did not start"
log "keepalive-simd ready ($phys_mib MiB physical memory, sparse)"

token=$(cat /proc/sys/kernel/random/uuid)
common=(--daemon "$sock" --rate "$rate" --ram-mib "$ram_mib" --ring 16384 --quiet)
n=0
qsock=$dir/qmp$n
"$minivmm" "${common[@]}" --qmp "$qsock" >"$dir/vmm$n.log" 2>&1 &
vmm_pid=$!
pids+=($vmm_pid)
wait_socket "$qsock" || die "minivmm did not start"
st=$(qmp "$qsock" '{"execute":"query-status"}') || die "query-status: $st"
qmp "$qsock" "{\"execute\":\"set-keepalive\",\"arguments\":{\"enable\":true,\"token\":\"$token\"}}" >/dev/null ||
  die "set-keepalive refused"
qmp "$qsock" '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-ignore-shared","state":true}]}}' \
  >/dev/null || die "migrate-set-capabilities refused"
log "guest running: $ram_mib MiB RAM, wire $rate packets/s, keepalive armed (token $token), x-ignore-shared on"

pauses=()      # stage-1 pauses (ms)
no_resume=0    # restarts after which the guest took no interrupt
spurious_sum=0 # kernel spurious interrupts, summed over kernels (kexec restarts the counter)
rows=()
cycle_line() { # kind index total status-json
  local s=$4
  local pause gap recv lost corr dev
  pause=$(jget "$s" pause-us); gap=$(jget "$s" guest-gap-us)
  recv=$(jget "$s" received); lost=$(jget "$s" lost); corr=$(jget "$s" corrupted); dev=$(jget "$s" device-state)
  [ "$(jget "$s" resume-interrupt)" = true ] || no_resume=$((no_resume + 1))
  local ms
  ms=$(awk -v u="$pause" 'BEGIN{printf "%.2f", u/1000}')
  printf '[%-8s %2d/%-2d] pid %-7s pause %8s ms  guest gap %8.1f ms  received %8s  lost %s  corrupted %s  device %s\n' \
    "$1" "$2" "$3" "$(jget "$s" pid)" "$ms" "$(awk -v u="$gap" 'BEGIN{print u/1000}')" "$recv" "$lost" "$corr" "$dev"
  rows+=("$1 $ms")
  [ "$lost" = 0 ] && [ "$corr" = 0 ] || die "the guest saw loss or corruption"
  last_ms=$ms
}

sleep "$slice"
for i in $(seq 1 "$stage1"); do
  if [ "$modes" = exec ] || { [ "$modes" = alternate ] && [ $((i % 2)) -eq 1 ]; }; then
    r=$(qmp "$qsock" '{"execute":"restart","arguments":{"mode":"exec"}}') || die "restart exec: $r"
    st=$(qmp "$qsock" '{"execute":"query-status"}') || die "query-status after exec: $st"
    cycle_line exec "$i" "$stage1" "$st"
  else
    n=$((n + 1))
    nsock=$dir/qmp$n
    mkfifo "$dir/state$n"
    "$minivmm" "${common[@]}" --qmp "$nsock" --incoming "$dir/state$n" --x-ignore-shared >"$dir/vmm$n.log" 2>&1 &
    new_pid=$!
    pids+=($new_pid)
    wait_socket "$nsock" || die "new minivmm did not prepare"
    r=$(qmp "$qsock" "{\"execute\":\"restart\",\"arguments\":{\"mode\":\"handover\",\"state-path\":\"$dir/state$n\"}}") ||
      die "restart handover: $r"
    qmp "$qsock" '{"execute":"quit"}' >/dev/null || true
    wait "$vmm_pid" || die "old minivmm exited with an error"
    vmm_pid=$new_pid qsock=$nsock
    st=$(qmp "$qsock" '{"execute":"query-status"}') || die "query-status after handover: $st"
    cycle_line handover "$i" "$stage1" "$st"
  fi
  pauses+=("$last_ms")
  sleep "$slice"
done

s2_pauses=()
for k in $(seq 1 "$stage2"); do
  n=$((n + 1))
  r=$(qmp "$qsock" "{\"execute\":\"restart\",\"arguments\":{\"mode\":\"handover\",\"state-path\":\"$dir/stage2-$k\"}}") ||
    die "stage-2 handover: $r"
  # The state file is the library's keepalive-snapshot-v1: keepalivectl reads it.
  dec=$("$ctl" decode-snapshot "$dir/stage2-$k" 2>&1) || die "keepalivectl decode-snapshot: $dec"
  grep -q "0000:00:04.0" <<<"$dec" && grep -q "minivmm-guest-ram" <<<"$dec" ||
    die "decode-snapshot does not show the NIC and guest RAM: $dec"
  qmp "$qsock" '{"execute":"quit"}' >/dev/null || true
  wait "$vmm_pid" || die "minivmm exited with an error before kexec"
  stats=$("$ctl" --socket "$sock" --json stats) || die "keepalivectl stats"
  spurious_sum=$((spurious_sum + $(jget "$stats" spurious)))
  "$ctl" --socket "$sock" kexec >"$dir/kexec$k.log" 2>&1 || die "keepalivectl kexec: $(cat "$dir/kexec$k.log")"
  qsock=$dir/qmp$n
  "$minivmm" "${common[@]}" --qmp "$qsock" --incoming "$dir/stage2-$k" --x-ignore-shared >"$dir/vmm$n.log" 2>&1 &
  vmm_pid=$!
  pids+=($vmm_pid)
  wait_socket "$qsock" || die "minivmm after kexec did not start"
  st=$(qmp "$qsock" '{"execute":"query-status"}') || die "query-status after kexec: $st"
  cycle_line kexec "$k" "$stage2" "$st"
  s2_pauses+=("$last_ms")
  sleep "$slice"
done

# The wire stops; the guest consumes everything the device delivered.
d=$(qmp "$qsock" '{"execute":"x-drain"}') || die "drain: $d"
st=$(qmp "$qsock" '{"execute":"query-status"}') || die "final query-status"
stats=$("$ctl" --socket "$sock" --json stats) || die "keepalivectl stats"
qmp "$qsock" '{"execute":"quit"}' >/dev/null || true
wait "$vmm_pid" || true

received=$(jget "$st" received) lost=$(jget "$st" lost) corrupted=$(jget "$st" corrupted)
reordered=$(jget "$st" reordered) gaps=$(jget "$st" gaps) faults=$(jget "$st" faults)
nic_packets=$(jget "$st" packets) nic_drops=$(jget "$st" drops) drained=$(jget "$d" drained)
dma_faults=$(jget "$stats" dma_faults) ir_faults=$(jget "$stats" ir_faults) irq_no_cpu=$(jget "$stats" irq_no_cpu)
flr=$(jget "$stats" resets)
spurious_sum=$((spurious_sum + $(jget "$stats" spurious)))
device_resets=$((flr - 1)) # VFIO's reset at the first open is not a loss
guest_spurious=$(jget "$st" spurious)
undelivered=0
[ "$drained" = true ] && [ "$received" = "$nic_packets" ] || undelivered=1
interrupts_lost=$((spurious_sum + irq_no_cpu + no_resume + undelivered))
corrupted_all=$((corrupted + reordered))

stat_ms() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; i=int(0.99*NR+0.999); if(i<1)i=1; if(i>NR)i=NR; printf "%.2f %.2f %.2f", m, a[i], a[NR]}'; }
read -r p50 p99 pmax <<<"$(stat_ms "${pauses[@]}")"
exec_p=() hand_p=()
for row in "${rows[@]}"; do
  case $row in exec*) exec_p+=("${row#* }") ;; handover*) hand_p+=("${row#* }") ;; esac
done
read -r e50 e99 _ <<<"$(stat_ms "${exec_p[@]:-0}")"
read -r h50 h99 _ <<<"$(stat_ms "${hand_p[@]:-0}")"
read -r k50 _ kmax <<<"$(stat_ms "${s2_pauses[@]:-0}")"

echo
echo "=================== keepalive demo summary ==================="
printf '%-42s %s\n' "guest RAM (MiB)" "$ram_mib" \
  "wire rate (packets/s)" "$rate" \
  "stage-1 restarts (exec / quit+start)" "$stage1 (${#exec_p[@]} / ${#hand_p[@]})" \
  "stage-2 cycles (handover, kexec, reclaim)" "$stage2" \
  "packets delivered by the NIC" "$nic_packets" \
  "packets verified by the guest" "$received" \
  "lost / gaps (guest)" "$lost / $gaps" \
  "corrupted / reordered (guest)" "$corrupted / $reordered" \
  "NIC drops (ring full)" "$nic_drops" \
  "guest faults / spurious vectors" "$faults / $guest_spurious" \
  "IOMMU DMA faults / IR faults / irq no-cpu" "$dma_faults / $ir_faults / $irq_no_cpu" \
  "kernel spurious interrupts" "$spurious_sum" \
  "restarts without a guest interrupt after" "$no_resume" \
  "device resets after the first open" "$device_resets" \
  "pause stage 1, median / p99 / max (ms)" "$p50 / $p99 / $pmax" \
  "  exec in place, median / p99 (ms)" "$e50 / $e99" \
  "  quit + start, median / p99 (ms)" "$h50 / $h99" \
  "pause stage 2 (incl. kexec), median / max" "$k50 / $kmax ms"
echo "=============================================================="

ok=true
{ [ "$lost" = 0 ] && [ "$gaps" = 0 ] && [ "$corrupted_all" = 0 ] && [ "$faults" = 0 ] && [ "$nic_drops" = 0 ] &&
  [ "$dma_faults" = 0 ] && [ "$ir_faults" = 0 ] && [ "$interrupts_lost" = 0 ] && [ "$device_resets" = 0 ] &&
  [ "$received" -gt 0 ]; } || ok=false
printf '{"stage1_restarts":%d,"stage1_exec":%d,"stage1_quit_start":%d,"stage2_cycles":%d,"packets_received":%s,"packets_lost":%s,"packets_corrupted":%s,"nic_packets":%s,"nic_drops":%s,"interrupts_lost":%s,"dma_faults":%s,"ir_faults":%s,"device_resets":%s,"pause_ms_median":%s,"pause_ms_p99":%s,"pause_ms_exec_median":%s,"pause_ms_quit_start_median":%s,"stage2_pause_ms_median":%s,"guest_ram_mib":%s,"rate_pps":%s,"kvm":true,"clean":%s}\n' \
  "${#pauses[@]}" "${#exec_p[@]}" "${#hand_p[@]}" "${#s2_pauses[@]}" "$received" "$lost" "$corrupted_all" "$nic_packets" \
  "$nic_drops" "$interrupts_lost" "$dma_faults" "$ir_faults" "$device_resets" "$p50" "$p99" "$e50" "$h50" "$k50" \
  "$ram_mib" "$rate" "$ok"
$ok
