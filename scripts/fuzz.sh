#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build/fuzz) and runs each for a
# bounded time on a temporary copy of its committed seed corpus, so the repo
# is never modified. Prints one line per target; exits non-zero on any crash.
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_TARGETS   targets to run (default: all three)
#   FUZZ_BUILD_DIR build directory (default build/fuzz)
#   --build-only   build, run nothing
#   --seed         rewrite tests/fuzz/corpus/ with fuzz_seed_corpus, run nothing
# Crash inputs and logs are kept in $FUZZ_BUILD_DIR/artifacts/<target>/.
# Reproduce one: $FUZZ_BUILD_DIR/tests/fuzz/<target> <crash-file>
# (KEEPALIVE_FUZZ_TRACE=1 prints every call; KEEPALIVE_FUZZ_SKIP, see
# tests/fuzz/fuzz_sim_kernel_ioctl.cpp, looks past a known finding).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

mode=run
case "${1:-}" in
  --build-only) mode=build ;;
  --seed) mode=seed ;;
  "") ;;
  *) echo "usage: $0 [--build-only|--seed]" >&2; exit 2 ;;
esac

ensure_packages "${KEEPALIVE_BASE_PACKAGES[@]}" clang libclang-rt-dev
cd "$KEEPALIVE_ROOT"
seconds=${FUZZ_SECONDS:-20}
build=${FUZZ_BUILD_DIR:-build/fuzz}
targets=(${FUZZ_TARGETS:-fuzz_handover_decode fuzz_uapi_dispatch fuzz_sim_kernel_ioctl})
corpus_root=tests/fuzz/corpus

max_len_of() {
  case $1 in
    fuzz_handover_decode) echo 4096 ;;   # a sim image is ~0.4 KiB; room for many devices/vectors
    fuzz_uapi_dispatch) echo 512 ;;      # structs are <= 40 bytes; room for long tails
    fuzz_sim_kernel_ioctl) echo 2048 ;;  # a few dozen operations
    *) echo 4096 ;;
  esac
}
corpus_of() {
  case $1 in
    fuzz_handover_decode) echo "$corpus_root/handover" ;;
    *) echo "$corpus_root/${1#fuzz_}" ;;
  esac
}
final_stat() { sed -n "s/^stat::$1: *//p" "$fuzz_log" | tail -1; }

mkdir -p "$build"
log "build: libFuzzer targets (clang, ASan+UBSan) in $build"
cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEEPALIVE_FUZZ=ON -DKEEPALIVE_WERROR=ON \
  -DKEEPALIVE_BUILD_BENCH=OFF -DKEEPALIVE_BUILD_EXAMPLES=OFF >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log"; exit 1; }
build_targets=("${targets[@]}")
[ "$mode" = seed ] && build_targets=(fuzz_seed_corpus)
cmake --build "$build" -j2 --target "${build_targets[@]}"

if [ "$mode" = seed ]; then
  rm -rf "$corpus_root"
  "$build/tests/fuzz/fuzz_seed_corpus" "$corpus_root"
  log "seed corpus written to $corpus_root"
  exit 0
fi
[ "$mode" = build ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for t in "${targets[@]}"; do
  corpus="$work/$t"
  artifacts="$build/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  seeds=$(corpus_of "$t")
  [ -d "$seeds" ] && cp -r "$seeds/." "$corpus/"
  fuzz_log="$artifacts/last-run.log"
  touch "$artifacts/.start"
  rc=0
  ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$build/tests/fuzz/$t" -max_total_time="$seconds" -max_len="$(max_len_of "$t")" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" >"$fuzz_log" 2>&1 || rc=$?
  execs=$(final_stat number_of_executed_units)
  rate=$(final_stat average_exec_per_sec)
  new_units=$(final_stat new_units_added)
  cov0=$(sed -n 's/.*INITED cov: \([0-9]*\).*/\1/p' "$fuzz_log" | head -1)
  cov1=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' "$fuzz_log" | tail -1)
  crashes=$(find "$artifacts" -maxdepth 1 -newer "$artifacts/.start" \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  printf '%-24s %s execs (%s/s), coverage %s -> %s (%s new inputs), %s crashes\n' "$t" "${execs:-?}" "${rate:-?}" \
    "${cov0:-?}" "${cov1:-?}" "${new_units:-?}" "$([ $rc -eq 0 ] && echo "$crashes" || echo "$((crashes > 0 ? crashes : 1))")"
  if [ $rc -ne 0 ]; then
    status=1
    log "$t FAILED (exit $rc): log $fuzz_log"
    grep -E '==ERROR|runtime error|fuzz_[a-z_]+:|^ *#[0-9]+ |Test unit written' "$fuzz_log" | head -30 >&2 || true
    crash=$(find "$artifacts" -maxdepth 1 -newer "$artifacts/.start" -name 'crash-*' | head -1)
    [ -n "$crash" ] && log "reproduce: $build/tests/fuzz/$t $crash"
  fi
done
exit $status
