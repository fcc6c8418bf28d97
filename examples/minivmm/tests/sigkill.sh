#!/usr/bin/env bash
# A VMM with keepalive armed (QMP set-keepalive: the device is KEPT_ALIVE while
# owned) is killed with SIGKILL. The device must stay alive (platform stats:
# packets keep increasing, no reset, no DMA fault) and be reclaimable with the
# token by a new VMM, which cannot restore the dead VMM's vCPUs: it reboots the
# guest on the same RAM; the guest's driver re-initialises the ring and
# verifies every packet from then on. Bus Master is checked by the new VMM.
#   sigkill.sh KEEPALIVE_SIMD KEEPALIVECTL MINIVMM [RATE]
set -euo pipefail
simd=$1 ctl=$2 minivmm=$3 rate=${4:-3000}
if ! { exec 9<>/dev/kvm; } 2>/dev/null; then echo "SKIP: /dev/kvm cannot be opened"; exit 77; fi
exec 9>&-
dir=$(mktemp -d /tmp/minivmm-sigkill.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$dir"/*.log; do echo "--- $f"; tail -5 "$f"; done; exit 1; }
jget() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2- | tr -d '"'; }
qmp() { "$minivmm" --qmp-call "$1" "$2"; }
wait_socket() { for _ in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done; return 1; }
stats() { "$ctl" --socket "$dir/simd.sock" --json stats; }

"$simd" --socket "$dir/simd.sock" --phys-mib 128 >"$dir/simd.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q ready "$dir/simd.log" && break; sleep 0.05; done
common=(--daemon "$dir/simd.sock" --rate "$rate" --ring 16384 --quiet)
token=$(cat /proc/sys/kernel/random/uuid)

"$minivmm" "${common[@]}" --qmp "$dir/q0" >"$dir/vmm0.log" 2>&1 &
victim=$!
pids+=($victim)
wait_socket "$dir/q0" || fail "VMM did not start"
qmp "$dir/q0" "{\"execute\":\"set-keepalive\",\"arguments\":{\"enable\":true,\"token\":\"$token\"}}" >/dev/null
sleep 1
st=$(qmp "$dir/q0" '{"execute":"query-status"}')
[ "$(jget "$st" device-state)" = kept_alive ] || fail "device not KEPT_ALIVE while owned: $st"
[ "$(jget "$st" received)" -gt 0 ] && [ "$(jget "$st" lost)" = 0 ] || fail "guest not verifying: $st"

kill -KILL "$victim"
wait "$victim" 2>/dev/null || true
s1=$(stats)
"$ctl" --socket "$dir/simd.sock" list >"$dir/list.log"
grep -q ownerless "$dir/list.log" || fail "device not OWNERLESS after SIGKILL: $(cat "$dir/list.log")"
sleep 0.5
s2=$(stats)
sleep 0.5
s3=$(stats)
p1=$(jget "$s1" packets) p2=$(jget "$s2" packets) p3=$(jget "$s3" packets)
echo "after SIGKILL: NIC packets $p1 -> $p2 -> $p3 (0.5 s apart), resets $(jget "$s3" resets), dma_faults $(jget "$s3" dma_faults)"
[ "$p2" -gt "$p1" ] && [ "$p3" -gt "$p2" ] || fail "the device stopped streaming"
[ "$(jget "$s3" resets)" = 1 ] || fail "the device was reset (FLR count $(jget "$s3" resets), 1 is VFIO's first open)"
[ "$(jget "$s3" dma_faults)" = 0 ] && [ "$(jget "$s3" ir_faults)" = 0 ] || fail "IOMMU faults: $s3"

# A wrong token is refused and changes nothing.
if "$minivmm" "${common[@]}" --qmp "$dir/qbad" --reclaim-reboot "$(cat /proc/sys/kernel/random/uuid)" \
  >"$dir/bad.log" 2>&1; then fail "reclaim with a wrong token succeeded"; fi
"$ctl" --socket "$dir/simd.sock" list | grep -q ownerless || fail "wrong-token reclaim changed the device"

"$minivmm" "${common[@]}" --qmp "$dir/q1" --reclaim-reboot "$token" >"$dir/vmm1.log" 2>&1 &
pids+=($!)
wait_socket "$dir/q1" || fail "new VMM did not start"
st=$(qmp "$dir/q1" '{"execute":"query-status"}')
sleep 1
st2=$(qmp "$dir/q1" '{"execute":"query-status"}')
s4=$(stats)
echo "new VMM (rebooted guest on the same RAM): $st2"
[ "$(jget "$st2" rebooted)" = true ] || fail "not a reboot"
[ "$(jget "$st2" device-state)" = kept_alive ] || fail "device not re-armed"
[ "$(jget "$st2" bus-master)" = true ] || fail "Bus Master is off"
r1=$(jget "$st" received) r2=$(jget "$st2" received)
[ "$r2" -gt "$r1" ] || fail "the rebooted guest receives nothing ($r1 -> $r2)"
[ "$(jget "$st2" lost)" = 0 ] && [ "$(jget "$st2" corrupted)" = 0 ] && [ "$(jget "$st2" faults)" = 0 ] ||
  fail "the rebooted guest saw loss or corruption"
[ "$(jget "$s4" resets)" = 1 ] || fail "the device was reset during the reclaim"
[ "$(jget "$s4" dma_faults)" = 0 ] || fail "DMA faults during the reboot"
qmp "$dir/q1" '{"execute":"quit"}' >/dev/null
echo "PASS: killed VMM's device streamed on ownerless (no reset, no fault) and was reclaimed with the token"
