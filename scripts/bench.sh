#!/usr/bin/env bash
# Restart-downtime benchmarks, in one run on this machine: Google Benchmark
# micro benchmarks, the sim-level downtime harness (host-side consumer at 100k
# packets/s) and the KVM-level one (the real-KVM mini-VMM guest verifying every
# packet; skipped, with the reason, when /dev/kvm cannot be opened). Prints
# readable tables, writes a timeline plot of one restart per strategy
# (build/bench-run/downtime-timeline.svg) and prints ONE JSON object as its last
# line: the headline keys (floor_ms, keepalive_ms, ...) are the KVM-level
# guest pause; the sim-level figures keep their names under a sim_ prefix
# (docs/performance.md). Timings are reported, never asserted.
# CYCLES (default 20) sets the restarts per strategy, COLD_CYCLES (default 5)
# the KVM-level cold restarts (each reboots the emulated guest: ~0.5 s).
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

log "end-to-end downtime (real KVM: mini-VMM guest, 1 vCPU, 1 GiB and 8 GiB, verifying every packet)"
kvm_rc=0 kvm_ok=false
build/bench/examples/minivmm/minivmm_downtime --cycles "${CYCLES:-20}" --cold-cycles "${COLD_CYCLES:-5}" \
  --ram-mib 1024,8192 --timeline "$out/kvm-timeline.csv" | tee "$out/kvm-downtime.txt" >&2 || kvm_rc=$?
kvm_json=$(tail -n 1 "$out/kvm-downtime.txt")
if [ "$kvm_rc" = 77 ]; then
  log "KVM-level harness SKIPPED: $(head -n 1 "$out/kvm-downtime.txt"); the headline keys are the sim-level ones"
elif jq -e '.kvm == true and (.error | not)' <<<"$kvm_json" >/dev/null 2>&1; then
  kvm_ok=true
  [ "$kvm_rc" = 0 ] || log "KVM level: keepalive LOST packets or interrupts (see keepalive_lost)"
else
  log "KVM-level harness failed (exit $kvm_rc)"
  exit 1
fi

kvm_table() {  # the headline figures against the targets, readable
  local j=$kvm_json s
  v() { jq -r --arg k "$1" '.[$k] // "-"' <<<"$j"; }
  {
    echo
    echo "================ restart downtime, KVM level: guest pause (ms), real KVM guest ================"
    printf '%-12s %12s %12s   %12s %12s\n' strategy "1 GiB med" "1 GiB p99" "8 GiB med" "8 GiB p99"
    for s in floor keepalive fd_handoff cold; do
      printf '%-12s %12s %12s   %12s %12s\n' "$s" "$(v "${s}_ms")" "$(v "${s}_p99_ms")" "$(v "${s}_ms_8192")" \
        "$(v "${s}_p99_ms_8192")"
    done
    printf '%-40s %10s %10s   %s\n' "" "1 GiB" "8 GiB" "target"
    printf '%-40s %10s %10s   %s\n' "keepalive median (ms)" "$(v keepalive_ms)" "$(v keepalive_ms_8192)" "<= 1" \
      "keepalive / floor" "$(v keepalive_over_floor)" "$(v keepalive_over_floor_8192)" "<= 1.5" \
      "cold / keepalive" "$(v cold_over_keepalive)" "$(v cold_over_keepalive_8192)" ">= 100" \
      "keepalive lost (packets+irqs+corrupt)" "$(v keepalive_lost)" "$(v keepalive_lost_8192)" "0"
    echo "================================================================================================"
  } >&2
}

us() {  # real time in microseconds of one benchmark by name
  jq -r --arg n "$1" '.benchmarks[] | select(.name == $n) | .real_time' "$out/micro.json"
}
ka1=$(us "BM_KeepaliveMappings/mappings:1/page:4096/real_time")
ka1m=$(us "BM_KeepaliveMappings/mappings:1048576/page:4096/real_time")
cpr1m=$(us "BM_CprMappings/mappings:1048576/page:4096/real_time")
remap1m=$(us "BM_FullRemapMappings/mappings:1048576/page:4096/real_time")

# Timeline plot: one bar per phase of one restart per strategy (sim: the
# first; KVM: the median one), sim level on top, KVM level below.
kvm_rows=0
kvm_plot=""
if $kvm_ok; then
  # One series per phase name (coloured, in the legend), bars placed per strategy.
  kvm_rows=$(($(wc -l <"$out/kvm-timeline.csv") - 1))
  series=() i=0
  colours=("#9400d3" "#009e73" "#56b4e9" "#e69f00" "#f0e442" "#0072b2" "#e51e10" "#000000" "#cc79a7" "#8b4513"
    "#808080" "#00ced1" "#ff69b4" "#2e8b57" "#ffa07a" "#191970")
  while IFS= read -r name; do
    series+=("\"$out/kvm-timeline.csv\" every ::1 using (strcol(2) eq \"$name\" ? x0(\$3) : 1/0):(y(strcol(1))):(x0(\$3)):(\$4):(y(strcol(1))-0.3):(y(strcol(1))+0.3) with boxxyerror lc rgb \"${colours[i % ${#colours[@]}]}\" title \"$name\"")
    i=$((i + 1))
  done < <(tail -n +2 "$out/kvm-timeline.csv" | cut -d, -f2 | awk '!seen[$0]++')
  kvm_plot="set title \"KVM level: the median restart per strategy, guest pause by phase (real KVM guest, 1 vCPU, 1 GiB)\"
set xrange [0.01:1000]
set key outside right top font \",9\"
x0(v) = v > 0.01 ? v : 0.01
plot $(IFS=,; echo "${series[*]}")"
fi
gnuplot <<GP
set terminal svg size 1200,$([ "$kvm_rows" -gt 0 ] && echo 900 || echo 460) font "sans,11" noenhanced
set output "$out/downtime-timeline.svg"
set datafile separator ","
set multiplot layout $([ "$kvm_rows" -gt 0 ] && echo 2 || echo 1),1
set xlabel "ms since the pause (log scale)"
set logscale x
set grid x
set style fill solid 0.6
set yrange [-0.8:4.0]
set ytics ("floor" 0, "keepalive" 1, "fd_handoff" 2, "cold" 3)
y(s) = (s eq "floor") ? 0 : (s eq "keepalive") ? 1 : (s eq "fd_handoff") ? 2 : 3
set title "Sim level: one restart per strategy, pause by phase (sim host, host-side consumer, 1 GiB)"
plot "$out/timeline.csv" every ::1 using (\$3>0?\$3:1e-4):(y(strcol(1))):(\$3>0?\$3:1e-4):(\$4):(y(strcol(1))-0.3):(y(strcol(1))+0.3):0 \
     with boxxyerror lc variable notitle, \
     "" every ::1 using (\$3>0?\$3:1e-4):(y(strcol(1))+0.42):2 with labels left font ",8" notitle
$kvm_plot
unset multiplot
GP
log "timeline plot: $out/downtime-timeline.svg"

micro=$(jq -n -c --argjson a "$ka1" --argjson b "$ka1m" --argjson c "$cpr1m" --argjson d "$remap1m" \
  '{freeze_resume_us_1_map:$a,freeze_resume_us_1M_map:$b,cpr_us_1M_map:$c,full_remap_us_1M_map:$d}')
sim=$(jq -c 'with_entries(.key |= "sim_" + .)' <<<"$downtime_json")
if $kvm_ok; then
  kvm_table
  final=$(jq -n -c --argjson s "$sim" --argjson k "$kvm_json" --argjson m "$micro" \
    '$k + {headline:"kvm"} + $m + $s')
else
  # No KVM here: the sim-level figures stand in for the headline keys.
  final=$(jq -n -c --argjson s "$sim" --argjson r "$downtime_json" --argjson m "$micro" \
    --arg why "$(head -n 1 "$out/kvm-downtime.txt")" \
    '$r + {kvm:false,kvm_skip_reason:$why,headline:"sim"} + $m + $s')
fi
echo "$final"
