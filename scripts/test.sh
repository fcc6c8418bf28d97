#!/usr/bin/env bash
# Builds and runs every test: the warnings-as-errors build and the ASan+UBSan
# build. Installs what is missing on Debian 12. Exits non-zero on any failure.
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

echo "keepalive: $total_pass passed, $total_fail failed, $total_skip skipped"
exit $status
