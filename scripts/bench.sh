#!/usr/bin/env bash
# Restart-downtime benchmarks: Google Benchmark micro benchmarks and the
# end-to-end downtime harness, in one run on this machine. Prints readable
# tables, writes a timeline plot of one restart per strategy
# (build/bench/downtime-timeline.svg), and prints ONE JSON object as its last line.
# Timings are reported, never asserted. CYCLES (default 20) sets the restarts per strategy.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
ensure_packages "${KEEPALIVE_BASE_PACKAGES[@]}" jq gnuplot-nox
cd "$KEEPALIVE_ROOT"
mkdir -p build
out=build/bench-run
mkdir -p "$out"
log "build: release"
configure_build build/bench -DCMAKE_BUILD_TYPE=Release -DKEEPALIVE_BUILD_TESTS=OFF >/dev/null

log "micro benchmarks (posting, IRTEs, walks, handover, freeze+resume vs mappings/vectors/devices)"
build/bench/bench/keepalive_micro_bench --benchmark_min_time=0.05 \
  --benchmark_out="$out/micro.json" --benchmark_out_format=json | tee "$out/micro.txt" >&2

log "end-to-end downtime (sim host, host-side consumer at 100k packets/s)"
build/bench/bench/keepalive_downtime --cycles "${CYCLES:-20}" --timeline "$out/timeline.csv" | tee "$out/downtime.txt" >&2
downtime_json=$(tail -n 1 "$out/downtime.txt")

us() {  # real time in microseconds of one benchmark by name
  jq -r --arg n "$1" '.benchmarks[] | select(.name == $n) | .real_time' "$out/micro.json"
}
ka1=$(us "BM_KeepaliveMappings/mappings:1/page:4096/real_time")
ka1m=$(us "BM_KeepaliveMappings/mappings:1048576/page:4096/real_time")
cpr1m=$(us "BM_CprMappings/mappings:1048576/page:4096/real_time")
remap1m=$(us "BM_FullRemapMappings/mappings:1048576/page:4096/real_time")

# Timeline plot: one bar per phase of the first restart of each strategy.
gnuplot <<GP
set terminal svg size 1100,460 font "sans,11" noenhanced
set output "$out/downtime-timeline.svg"
set datafile separator ","
set title "One restart per strategy: guest-visible pause by phase (sim host, 1 GiB guest)"
set xlabel "ms since the pause (log scale)"
set logscale x
set yrange [-0.8:4.0]
set ytics ("floor" 0, "keepalive" 1, "fd_handoff" 2, "cold" 3)
set grid x
set style fill solid 0.6
y(s) = (s eq "floor") ? 0 : (s eq "keepalive") ? 1 : (s eq "fd_handoff") ? 2 : 3
plot "$out/timeline.csv" every ::1 using (\$3>0?\$3:1e-4):(y(strcol(1))):(\$3>0?\$3:1e-4):(\$4):(y(strcol(1))-0.3):(y(strcol(1))+0.3):0 \
     with boxxyerror lc variable notitle, \
     "" every ::1 using (\$3>0?\$3:1e-4):(y(strcol(1))+0.42):2 with labels left font ",8" notitle
GP
log "timeline plot: $out/downtime-timeline.svg"

echo "${downtime_json%\}},\"freeze_resume_us_1_map\":${ka1},\"freeze_resume_us_1M_map\":${ka1m},\"cpr_us_1M_map\":${cpr1m},\"full_remap_us_1M_map\":${remap1m}}"
