#!/usr/bin/env bash
# Builds and runs every test: the warnings-as-errors build, the ASan+UBSan
# build, the fuzzers (short runs) and the real-kernel harness under QEMU.
# Installs what is missing on Debian 12. Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
ensure_packages "${KEEPALIVE_BASE_PACKAGES[@]}"
cd "$KEEPALIVE_ROOT"
mkdir -p build

total_pass=0 total_fail=0 total_skip=0
run_suite() {  # run_suite NAME DIR
  local name=$1 dir=$2 junit="$KEEPALIVE_ROOT/$2/ctest-junit.xml" rc=0
  log "running tests: $name"
  ctest --test-dir "$dir" --output-on-failure -j2 --output-junit "$junit" || rc=1
  local line tests failures skipped
  line=$(tr '\n\t' '  ' <"$junit" | grep -m1 -o '<testsuite [^>]*>')
  tests=$(sed -E 's/.* tests="([0-9]+)".*/\1/' <<<"$line")
  failures=$(sed -E 's/.* failures="([0-9]+)".*/\1/' <<<"$line")
  skipped=$(sed -E 's/.* skipped="([0-9]+)".*/\1/' <<<"$line")
  total_pass=$((total_pass + tests - failures - skipped))
  total_fail=$((total_fail + failures))
  total_skip=$((total_skip + skipped))
  [ $rc -eq 0 ] && [ "$failures" -eq 0 ]
}

status=0
log "build: release, warnings as errors"
configure_build build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEEPALIVE_WERROR=ON
run_suite release build/release || status=1

log "build: ASan+UBSan"
configure_build build/asan -DCMAKE_BUILD_TYPE=Debug -DKEEPALIVE_WERROR=ON -DKEEPALIVE_SANITIZE=ON \
  -DKEEPALIVE_BUILD_BENCH=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite asan build/asan || status=1

# Whole-program suites, one test each in the summary: the fuzzers (bounded
# runs) and the real-kernel harness (Linux 7.3 under QEMU; cold: builds two
# kernels, ~20 min on 2 cores; cached: seconds).
run_script() {  # run_script NAME COMMAND...
  local name=$1 logf="$KEEPALIVE_ROOT/build/$1.log"
  shift
  log "running: $name"
  if "$@" >"$logf" 2>&1; then
    total_pass=$((total_pass + 1))
    log "$name: passed: $(tail -n 1 "$logf")"
  else
    total_fail=$((total_fail + 1))
    status=1
    log "$name: FAILED (last lines of $logf):"
    tail -n 40 "$logf" >&2
  fi
}
run_script fuzz bash scripts/fuzz.sh
if [ "$(id -u)" -eq 0 ]; then
  run_script kernel bash kernel/linux/test.sh
else
  log "kernel: SKIPPED: needs root (installs QEMU and the kernel build deps, writes /var/cache/keepalive-kernel)"
  total_skip=$((total_skip + 1))
fi

echo "keepalive: $total_pass passed, $total_fail failed, $total_skip skipped"
exit $status
