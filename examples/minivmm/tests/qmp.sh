#!/usr/bin/env bash
# The QMP-like control socket of minivmm: every command, its errors, and an
# exec and a handover restart driven through it.
#   qmp.sh KEEPALIVE_SIMD MINIVMM
set -euo pipefail
simd=$1 minivmm=$2
if ! { exec 9<>/dev/kvm; } 2>/dev/null; then echo "SKIP: /dev/kvm cannot be opened"; exit 77; fi
exec 9>&-
dir=$(mktemp -d /tmp/minivmm-qmp.XXXXXX)
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
wait_socket() { for _ in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done; return 1; }
# ok SOCK REQUEST: must return; err SOCK REQUEST CLASS DESC-REGEX: must fail so.
ok() { out=$("$minivmm" --qmp-call "$1" "$2") || fail "$2 -> $out"; echo "ok   $2 -> $out"; }
err() {
  if out=$("$minivmm" --qmp-call "$1" "$2"); then fail "$2 succeeded: $out"; fi
  grep -q "^{\"error\":{\"class\":\"$3\",\"desc\":\".*$4" <<<"$out" || fail "$2 -> $out (expected $3 /$4/)"
  echo "err  $2 -> $out"
}

"$simd" --socket "$dir/simd.sock" --phys-mib 128 >"$dir/simd.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q ready "$dir/simd.log" && break; sleep 0.05; done
common=(--daemon "$dir/simd.sock" --rate 2000 --quiet)
"$minivmm" "${common[@]}" --qmp "$dir/q0" >"$dir/vmm0.log" 2>&1 &
vmm=$!
pids+=($vmm)
wait_socket "$dir/q0" || fail "VMM did not start"
q=$dir/q0
token=$(cat /proc/sys/kernel/random/uuid)

ok "$q" '{"execute":"qmp_capabilities"}'
ok "$q" '{"execute":"query-status"}'
[ "$(jget "$out" status)" = running ] && [ "$(jget "$out" enabled)" = false ] && [ "$(jget "$out" device-state)" = running ] ||
  fail "initial status: $out"
err "$q" '{"execute":"no-such-command"}' CommandNotFound "no-such-command"
err "$q" '{"execute":' GenericError "JSON parse error"
err "$q" '{"exec":"query-status"}' GenericError "expected"
err "$q" '{"execute":"restart","arguments":{"mode":"exec"}}' GenericError "x-ignore-shared is off"
err "$q" '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"postcopy-ram","state":true}]}}' \
  GenericError "not supported"
ok "$q" '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-ignore-shared","state":true}]}}'
err "$q" '{"execute":"restart","arguments":{"mode":"exec"}}' GenericError "keepalive is not enabled"
err "$q" '{"execute":"set-keepalive","arguments":{"enable":true,"token":"not-a-uuid"}}' GenericError "token"
err "$q" '{"execute":"set-keepalive","arguments":{"enable":true,"token":"00000000-0000-0000-0000-000000000000"}}' \
  GenericError "token"
ok "$q" "{\"execute\":\"set-keepalive\",\"arguments\":{\"enable\":true,\"token\":\"$token\"}}"
ok "$q" '{"execute":"query-status"}'
[ "$(jget "$out" device-state)" = kept_alive ] && [ "$(jget "$out" token)" = "$token" ] || fail "armed status: $out"
ok "$q" '{"execute":"set-keepalive","arguments":{"enable":false}}'
ok "$q" '{"execute":"query-status"}'
[ "$(jget "$out" device-state)" = running ] && [ "$(jget "$out" enabled)" = false ] || fail "disarmed status: $out"
ok "$q" "{\"execute\":\"set-keepalive\",\"arguments\":{\"enable\":true,\"token\":\"$token\"}}"
err "$q" '{"execute":"restart","arguments":{"mode":"sideways"}}' GenericError "exec or handover"
err "$q" '{"execute":"restart","arguments":{"mode":"handover"}}' GenericError "state-path"

ok "$q" '{"execute":"query-status"}'
pid_before=$(jget "$out" pid)
ok "$q" '{"execute":"restart","arguments":{"mode":"exec"}}'
ok "$q" '{"execute":"query-status"}'
[ "$(jget "$out" pid)" = "$pid_before" ] || fail "exec changed the pid"
[ "$(jget "$out" resume-interrupt)" = true ] && [ "$(jget "$out" lost)" = 0 ] && [ "$(jget "$out" device-state)" = kept_alive ] &&
  [ "$(jget "$out" x-ignore-shared)" = true ] || fail "after exec: $out"
kill -0 "$vmm" || fail "the exec'd VMM is not the same process"

mkfifo "$dir/state"
"$minivmm" "${common[@]}" --qmp "$dir/q1" --incoming "$dir/state" --x-ignore-shared >"$dir/vmm1.log" 2>&1 &
new=$!
pids+=($new)
wait_socket "$dir/q1" || fail "new VMM did not prepare"
ok "$q" "{\"execute\":\"restart\",\"arguments\":{\"mode\":\"handover\",\"state-path\":\"$dir/state\"}}"
ok "$q" '{"execute":"query-status"}'
[ "$(jget "$out" status)" = postmigrate ] || fail "old VMM after handover: $out"
err "$q" "{\"execute\":\"restart\",\"arguments\":{\"mode\":\"handover\",\"state-path\":\"$dir/x\"}}" GenericError "nothing to hand over"
ok "$q" '{"execute":"quit"}'
wait "$vmm" || fail "old VMM exit status"
ok "$dir/q1" '{"execute":"query-status"}'
[ "$(jget "$out" status)" = running ] && [ "$(jget "$out" lost)" = 0 ] && [ "$(jget "$out" token)" = "$token" ] &&
  [ "$(jget "$out" resume-interrupt)" = true ] || fail "new VMM: $out"
ok "$dir/q1" '{"execute":"x-drain"}'
[ "$(jget "$out" drained)" = true ] || fail "the guest did not consume everything"
ok "$dir/q1" '{"execute":"quit"}'
wait "$new" || fail "new VMM exit status"
echo "PASS: pid $pid_before exec'd in place, then handed over to pid $new"
