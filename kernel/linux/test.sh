#!/usr/bin/env bash
# The keepalive real-kernel test: boots the patched 7.3 kernel and the pristine
# one (baseline) under QEMU/TCG (q35 + intel-iommu with interrupt remapping +
# edu) and runs the guest test program kernel/linux/guest/ka_guest in each:
#   patched:  conformance, stage1 (fidelity check while ownerless), unowned-fault,
#             unbind, cdev
#   stage2:   the patched kernel again: stage2-before, kexec into the same kernel,
#             stage2-after (ka.mode=stage2b)
#   stage2x:  three kernels, two kexecs: a handover image corrupted on purpose is
#             refused whole (K2), then a RESTORED device is released by RESET_DEVICE
#             without being opened (K3)
#   baseline: stage1 --baseline (the same flow on an unpatched kernel)
# README.md describes every scenario and JSON field.
# Prints a readable report; the LAST stdout line is one JSON object. Exit 0 iff
# stage1 and stage2 pass, the baseline detects the loss and nothing failed.
#
# Environment:
#   KEEPALIVE_KERNEL_IMAGE     patched bzImage (default: build-kernel.sh)
#   KEEPALIVE_BASELINE_IMAGE   pristine bzImage (default: build-kernel.sh --pristine)
#   KEEPALIVE_BOOT_TIMEOUT     seconds per boot (default 180)
#   KEEPALIVE_KERNEL_CACHE     as for build-kernel.sh; serial logs are kept there
#   KEEPALIVE_TEST_SKIP_BASELINE=1   boot only the patched kernel
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KEEPALIVE_KERNEL_CACHE:-/var/cache/keepalive-kernel}
TIMEOUT=${KEEPALIVE_BOOT_TIMEOUT:-180}
BUSYBOX=/bin/busybox

log() { printf '[test] %s\n' "$*" >&2; }
die() { printf '[test] error: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

main() {
t0=$(now)
patched=${KEEPALIVE_KERNEL_IMAGE:-}
if [[ -z $patched ]]; then patched=$("$HERE/build-kernel.sh" | tail -n1); fi
baseline=${KEEPALIVE_BASELINE_IMAGE:-}
if [[ -z $baseline && -z ${KEEPALIVE_TEST_SKIP_BASELINE:-} ]]; then
    baseline=$("$HERE/build-kernel.sh" --pristine | tail -n1)
fi
t_kernels=$(now)
[[ -f $patched ]] || die "no patched kernel image: '$patched'"
if [[ ! -x $BUSYBOX ]] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX missing or not static (install busybox-static)"
fi

mkdir -p "$CACHE/guest"
guest=$("$HERE/guest/build.sh" "$CACHE/guest" | tail -n1)
t_guest=$(now)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$guest" "$root/bin/ka_guest"

# Guest side: the mode comes from the kernel command line (ka.mode=...).
cat >"$root/init" <<'EOF'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox grep -q '^devtmpfs /dev ' /proc/mounts || /bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
# Kernel messages stay in the ring buffer (printed at the end), out of the report lines.
dmesg -n 1
mount -t sysfs sysfs /sys
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
mode=$(sed -n 's/.*ka\.mode=\([a-z0-9]*\).*/\1/p' /proc/cmdline)

edu=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && edu=${d##*/}
done
if [ -n "$edu" ]; then
    dev=/sys/bus/pci/devices/$edu
    [ -e "$dev/driver" ] && echo "$edu" >"$dev/driver/unbind"
    echo vfio-pci >"$dev/driver_override"
    echo "$edu" >/sys/bus/pci/drivers_probe
fi

echo "KA: begin"
echo "KA: boot.kernel=$(uname -r)"
echo "KA: boot.mode=$mode"
echo "KA: boot.edu=${edu:-none}"
echo "KA: boot.ir_mode=$(dmesg | sed -n 's/.*DMAR-IR: Enabled IRQ remapping in \([a-z0-9]*\) mode.*/\1/p' | head -n1)"
if [ "$mode" = patched ]; then
    /bin/ka_guest conformance
    echo "KA: conformance.exit=$?"
    /bin/ka_guest stage1 --fidelity
    echo "KA: stage1.exit=$?"
    echo "KA: dmesg.dmar_dma_faults_stage1=$(dmesg | grep -cE 'DMAR: \[DMA (Read|Write)')"
    /bin/ka_guest unowned-fault
    echo "KA: fault.exit=$?"
    /bin/ka_guest unbind
    echo "KA: unbind.exit=$?"
    /bin/ka_guest cdev
    echo "KA: cdev.exit=$?"
elif [ "$mode" = stage2 ]; then
    # Does not return when the kexec happens; the next kernel runs stage2b.
    /bin/ka_guest stage2-before
    echo "KA: stage2.before_exit=$?"
elif [ "$mode" = stage2x ]; then
    /bin/ka_guest stage2x-before
    echo "KA: s2x.before_exit=$?"
elif [ "$mode" = stage2y ]; then
    echo "KA: s2y.dmesg_iommu_refused=$(dmesg | grep -c 'DMAR: keepalive: handover image refused')"
    echo "KA: s2y.dmesg_translation_kept=$(dmesg | grep -c 'DMAR: keepalive: .*translation kept on, old tables dropped')"
    echo "KA: s2y.dmesg_translation_disabled=$(dmesg | grep -c 'Translation was enabled for')"
    echo "KA: s2y.dmesg_iommu_handover=$(dmesg | grep -c 'DMAR: keepalive: handover of')"
    echo "KA: s2y.dmesg_vfio_refused=$(dmesg | grep -c 'vfio-keepalive: handover image refused')"
    echo "KA: s2y.dmesg_device_stopped=$(dmesg | grep -c 'keepalive: handover image refused: bus mastering off')"
    echo "KA: s2y.dmesg_restored=$(dmesg | grep -c 'keepalive: restored after kexec')"
    echo "KA: s2y.dmesg_ir_refused=$(dmesg | grep -c 'DMAR-IR: keepalive: .*handover image refused: no IRTE adopted')"
    echo "KA: s2y.dmesg_irte_adopted=$(dmesg | grep -c 'DMAR-IR: keepalive: .*IRTE .* adopted')"
    /bin/ka_guest stage2x-refused
    echo "KA: s2y.exit=$?"
elif [ "$mode" = stage2z ]; then
    echo "KA: s2z.dmesg_restored=$(dmesg | grep -c 'keepalive: restored after kexec')"
    echo "KA: s2z.dmesg_irte_adopted=$(dmesg | grep -c 'DMAR-IR: keepalive: .*IRTE .* adopted')"
    /bin/ka_guest stage2x-reset
    echo "KA: s2z.exit=$?"
    echo "KA: s2z.dmesg_irte_released=$(dmesg | grep -c 'keepalive: held IRTE [0-9]* released')"
    echo "KA: s2z.dmesg_rebuilt=$(dmesg | grep -c 'vfio: 1 handover mapping(s) adopted, pending')"
    echo "KA: s2z.dmesg_in_place=$(dmesg | grep -c 'preserved tables and DID [0-9]* adopted in place')"
elif [ "$mode" = stage2b ]; then
    echo "KA: stage2.kexec_boot_uptime=$(cut -d' ' -f1 /proc/uptime)"
    /bin/ka_guest stage2-after
    echo "KA: stage2.after_exit=$?"
    echo "KA: dmesg.iommu_handover=$(dmesg | grep -c 'DMAR: keepalive: handover of 1 device')"
    echo "KA: dmesg.handover=$(dmesg | grep -c 'vfio-keepalive: handover of 1 device')"
    echo "KA: dmesg.restored=$(dmesg | grep -c 'keepalive: restored after kexec')"
    echo "KA: dmesg.irte_adopted=$(dmesg | grep -c 'DMAR-IR: keepalive: .*IRTE .* adopted')"
    echo "KA: dmesg.irte_reconnected=$(dmesg | grep -c 'keepalive: IRTE [0-9]* reconnected')"
    echo "KA: dmesg.adopted=$(dmesg | grep -c 'vfio: 1 handover mapping(s) adopted')"
    echo "KA: dmesg.adopted_in_place=$(dmesg | grep -c 'keepalive: preserved tables and DID [0-9]* adopted in place')"
else
    /bin/ka_guest stage1 --baseline
    echo "KA: stage1.exit=$?"
fi
echo "KA: dmesg.dmar_dma_faults=$(dmesg | grep -cE 'DMAR: \[DMA (Read|Write)')"
echo "KA: dmesg.dmar_ir_faults=$(dmesg | grep -c 'INTR-REMAP')"
echo "KA: dmesg.kernel_warnings=$(dmesg | grep -cE 'WARNING:|BUG:|Oops|possible circular locking|possible recursive locking|inconsistent lock state|sleeping function called')"
echo "KA: boot.uptime=$(cut -d' ' -f1 /proc/uptime)"
# Only with lockdep (dev-kernel.sh test-debug): 1 = no lock report disabled it.
[ -r /proc/lockdep_stats ] && echo "KA: boot.debug_locks=$(sed -n 's/.*debug_locks: *//p' /proc/lockdep_stats)"
echo "KA: end"
dmesg | grep -E 'DMAR|vfio|keepalive' | sed 's/^/dmesg| /'
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9n) >"$tmp/initrd.gz"
# The stage-2 boot kexecs into the same kernel and the initrd above.
mkdir -p "$root/boot"
cp "$patched" "$root/boot/bzImage"
cp "$tmp/initrd.gz" "$root/boot/initrd.gz"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9n) >"$tmp/initrd-s2.gz"
# stage2x kexecs twice: its first kernel loads initrd-s2.gz, its second initrd.gz.
cp "$tmp/initrd-s2.gz" "$root/boot/initrd-s2.gz"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -1n) >"$tmp/initrd-s3.gz"

# boot MODE IMAGE -> serial log path; the boot's wall time in $tmp/MODE.secs
boot() {
    local mode=$1 image=$2 serial=$CACHE/test-$1.serial.log initrd=$tmp/initrd.gz
    [[ $mode == stage2 ]] && initrd=$tmp/initrd-s2.gz
    [[ $mode == stage2x ]] && initrd=$tmp/initrd-s3.gz
    log "booting $mode kernel $(basename "$image") (timeout ${TIMEOUT}s), serial log: $serial"
    local start rc
    start=$(now)
    set +e
    timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 \
        -machine q35,kernel-irqchip=split -accel tcg \
        -device intel-iommu,intremap=on -device edu \
        -m 1G -smp 1 -nographic -no-reboot \
        -kernel "$image" -initrd "$initrd" \
        -append "console=ttyS0 intel_iommu=on liveupdate=1 panic=-1 ka.mode=$mode" \
        </dev/null 2>&1 | tr -d '\r' >"$serial"
    rc=${PIPESTATUS[0]}
    set -e
    secs "$start" "$(now)" >"$tmp/$mode.secs"
    [[ $rc -eq 0 ]] || log "$mode: qemu exited with $rc (124: timeout)"
    grep -q 'KA: end' "$serial" || log "$mode: no complete report in the serial output"
}

boot patched "$patched"
boot stage2 "$patched"
boot stage2x "$patched"
if [[ -n $baseline ]]; then boot baseline "$baseline"; fi
t_end=$(now)

# ---- Evaluation
declare -A P=() B=() S=()
load() {  # load ARRAYNAME SERIAL
    local -n into=$1
    local line
    while IFS= read -r line; do
        if [[ $line =~ ^KA:\ ([a-z0-9_]+\.[a-z0-9_]+)=(.*)$ ]]; then into[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}; fi
    done <"$2"
}
load P "$CACHE/test-patched.serial.log"
load S "$CACHE/test-stage2.serial.log"
declare -A X=()
load X "$CACHE/test-stage2x.serial.log"
# The header the patch series adds must be the project's uapi, byte for byte.
P[host.uapi_in_sync]=0
if diff -q <(awk '/^diff --git/ { on = ($0 ~ /include\/uapi\/linux\/vfio_keepalive.h/) ; next }
                 on && /^\+\+\+ / { next }
                 on && /^\+/ { print substr($0, 2) }' "$HERE"/patches/*.patch) \
           "$HERE/../../uapi/linux/vfio_keepalive.h" >/dev/null; then
    P[host.uapi_in_sync]=1
fi
if [[ -n $baseline ]]; then load B "$CACHE/test-baseline.serial.log"; fi
# Patch 0009's keepalive_pi.h must be kernel/linux/kvm/keepalive_pi.h, byte for byte.
P[host.kvm_header_in_sync]=0
if "$HERE/kvm/check-header.sh" 2>/dev/null; then P[host.kvm_header_in_sync]=1; fi

failures=()
expect() {  # expect ARRAYNAME KEY OP VALUE
    local -n from=$1
    local have=${from[$2]:-} ok=0
    case $3 in
        ==) [[ $have == "$4" ]] && ok=1 ;;
        '>=') [[ $have =~ ^-?[0-9]+$ ]] && ((have >= $4)) && ok=1 ;;
    esac
    if ((ok)); then printf '  ok    %-34s %s\n' "$2" "$have"
    else printf '  FAIL  %-34s %s (want %s %s)\n' "$2" "${have:-<missing>}" "$3" "$4"; failures+=("$1:$2"); fi
}

echo "== keepalive real-kernel test: Linux ${P[boot.kernel]:-?} under QEMU/TCG, edu ${P[boot.edu]:-?}, IR ${P[boot.ir_mode]:-?} mode"
echo "-- conformance (uapi suite against the patched kernel)"
grep '^KA-CHECK: ' "$CACHE/test-patched.serial.log" | grep -v 'fidelity' | sed 's/^KA-CHECK: /  /' | grep -v '^  PASS' || true
printf '  %s checks: %s passed, %s failed, %s n/a (stage-2 checks without CAP_STAGE2)\n' "${P[conformance.checks]:-?}" \
    "${P[conformance.passed]:-?}" "${P[conformance.failed]:-?}" "${P[conformance.not_applicable]:-?}"
expect P conformance.failed == 0
expect P conformance.checks '>=' 40
expect P conformance.state_after == 0

echo "-- stage1 on the patched kernel: A exits with a DMA in flight, B reclaims"
expect P stage1.a_enter_no_masking == -95
expect P stage1.a_enter == 0
expect P stage1.a_irq_mode == 2
expect P stage1.a_nr_vectors == 1
expect P stage1.a_dma_running_at_exit == 1
expect P stage1.p_state == 2
expect P stage1.p_nr_pending '>=' 1
expect P stage1.p_dma_landed == 1
expect P stage1.p_bus_master == 1
expect P stage1.p_msi_enabled == 1
expect P stage1.p_msi_per_vector_mask == 0
expect P stage1.b0_map_before_token == -13
expect P stage1.b0_open_no_token == -13
expect P stage1.b0_open_wrong_token == -13
expect P stage1.b1_open_with_token == 0
expect P stage1.b1_state == 3
expect P stage1.b1_nr_pending '>=' 1
expect P stage1.b1_irq_delivered == 1
expect P stage1.b1_exit == 137
expect P stage1.p1_state == 2
expect P stage1.p1_nr_pending '>=' 1
expect P stage1.p1_dma_landed == 1
expect P stage1.b_open_with_token == 0
expect P stage1.b_state == 3
expect P stage1.b_nr_pending '>=' 1
expect P stage1.b_domain_id == "${P[stage1.p_domain_id]:-?}"
expect P stage1.b_marker_kept == 1
expect P stage1.b_bus_master == 1
expect P stage1.b_dma_landed == 1
expect P stage1.b_loopback_parked == 0
expect P stage1.b_disable_parked == 0
expect P stage1.b_nr_pending_after_disable == 1
expect P stage1.b_irq_delivered == 1
expect P stage1.b_dma_faults == 0
expect P stage1.b_unmap_vaddr == 0
expect P stage1.b_map_vaddr == 0
expect P stage1.b_roundtrip == 1
expect P stage1.b_roundtrip_irq == 1
expect P stage1.b_leave_wrong_token == -13
expect P stage1.b_leave == 0
expect P stage1.b_state_after_leave == 0
expect P stage1.p_listed_after == 0
expect P dmesg.dmar_dma_faults_stage1 == 0
echo "-- unowned fault: a kept-alive device faults with no owner; the operator resets it"
expect P fault.a3_enter == 0
expect P fault.reset_while_owned == -16
expect P fault.event_dma_fault == 1
expect P fault.event_bdf == "${P[boot.edu]:-}"
expect P fault.event_addr == 0x300000
expect P fault.state_before_reset == 2
expect P fault.reset == 0
expect P fault.reset_again == -16
expect P fault.listed_after_reset == 0
expect P fault.event_reset == 1
expect P fault.event_seq_increases == 1
expect P fault.bus_master_after_reset == 0
expect P fault.c_open_with_old_token == -2
expect P fault.c_open_plain == 0
expect P fault.c_state == 0
expect P fault.c_dma_faults '>=' 1
expect P dmesg.dmar_dma_faults '>=' 1
expect P dmesg.dmar_ir_faults == 0
echo "-- unbind: the driver leaves an ownerless kept-alive device"
expect P unbind.a4_enter == 0
expect P unbind.state_before == 2
expect P unbind.unbind_written == 1
expect P unbind.listed_after == 0
expect P unbind.event_reset == 1
expect P unbind.bus_master_after == 0
expect P unbind.group_node_after == 0
expect P unbind.rebound == 1
expect P unbind.c2_open_plain == 0
expect P unbind.c2_state == 0
echo "-- cdev: stage 1 through the device cdev and iommufd: the binding and its context outlive the owner"
expect P cdev.get_iommufd_running == -2
expect P cdev.bind_with_token_running == -2
expect P cdev.enter_unattached == -95
expect P cdev.a_bind == 0
expect P cdev.a_attach == 0
expect P cdev.a_enter == 0
expect P cdev.a_state == 1
expect P cdev.a_exit == 0
expect P cdev.p_state == 2
expect P cdev.p_nr_pending '>=' 1
expect P cdev.p_domain_same == 1
expect P cdev.p_dma_landed == 1
expect P cdev.p_bus_master == 1
expect P cdev.b0_get_wrong_token == -13
expect P cdev.b0_bind_no_token == -13
expect P cdev.b0_bind_other_context == -16
expect P cdev.b0_open_group == -16
expect P cdev.b1_get_iommufd == 0
expect P cdev.b1_bind == 0
expect P cdev.b1_devid_same == 1
expect P cdev.b1_attach == 0
expect P cdev.b1_hwpt_same == 1
expect P cdev.b1_irq_delivered == 1
expect P cdev.b1_exit == 137
expect P cdev.p1_state == 2
expect P cdev.p1_nr_pending '>=' 1
expect P cdev.p1_dma_landed == 1
expect P cdev.b_get_iommufd == 0
expect P cdev.b_bind == 0
expect P cdev.b_devid_same == 1
expect P cdev.b_attach == 0
expect P cdev.b_hwpt_same == 1
expect P cdev.b_change_process == 0
expect P cdev.b_state == 3
expect P cdev.b_domain_same == 1
expect P cdev.b_dma_faults == 0
expect P cdev.b_get_iommufd_owned == -16
expect P cdev.b_marker_kept == 1
expect P cdev.b_bus_master == 1
expect P cdev.b_dma_landed == 1
expect P cdev.b_irq_delivered == 1
expect P cdev.b_roundtrip == 1
expect P cdev.b_roundtrip_irq == 1
expect P cdev.b_leave == 0
expect P cdev.b_state_after_leave == 0
expect P cdev.a2_enter == 0
expect P cdev.r_state == 2
expect P cdev.r_reset == 0
expect P cdev.r_get_iommufd_after_reset == -2
expect P cdev.r_open_group == 0
expect P cdev.r_bind_fresh == 0
expect P cdev.done == 1
expect P dmesg.kernel_warnings == 0
if [[ -n ${P[boot.debug_locks]:-} ]]; then expect P boot.debug_locks == 1; fi
echo "-- fidelity: Linux's VT-d tables from /dev/mem vs debugfs (while the device is ownerless)"
printf '  registers %s, root/context %s, second-level %s, IRTE %s; DID %s, IRTE of edu MSI %s\n' \
    "${P[fidelity.registers_checked]:-?}" "${P[fidelity.root_context_checked]:-?}" \
    "${P[fidelity.sl_entries_checked]:-?}" "${P[fidelity.irte_checks]:-?}" \
    "${P[fidelity.edu_did]:-?}" "${P[fidelity.edu_irte]:-?}"
grep '^KA-CHECK: FAIL fidelity' "$CACHE/test-patched.serial.log" | sed 's/^KA-CHECK: /  /' || true
expect P fidelity.mismatches == 0
expect P fidelity.edu_did == "${P[stage1.p_domain_id]:-?}"
expect P host.uapi_in_sync == 1
expect P host.kvm_header_in_sync == 1
expect P fidelity.entries_checked '>=' 8

echo "-- stage2: A exits with a DMA in flight, PREPARE, kexec; the DMA lands during the reboot; B reclaims"
s2_start=${#failures[@]}
expect S stage2.kexec_load == 0
expect S stage2.a_enter == 0
expect S stage2.a_exit == 0
expect S stage2.p_state == 2
expect S stage2.p_caps == 0xe
expect S stage2.luo_preserve == 0
expect S stage2.prepare == 0
expect S stage2.prepare_nr_devices == 1
expect S stage2.prepare_again == -16
expect S stage2.abort == 0
expect S stage2.abort_nr_devices == 1
expect S stage2.p_thawed_state == 2
expect S stage2.abort_again == -16
expect S stage2.prepare2 == 0
expect S stage2.p_frozen_state == 4
expect S stage2.p_bus_master == 1
expect S stage2.p_intx_disabled == 1
expect S stage2.p_dma_running_at_reboot == 1
expect S stage2.p_irte_present_sid == 1
expect S stage2.p_msi_disabled == 1
expect S stage2.p_irte_held == 1
expect S stage2.before_kernel_warnings == 0
expect S stage2.before_dmar_faults == 0
if [[ -n ${S[stage2.before_debug_locks]:-} ]]; then expect S stage2.before_debug_locks == 1; fi
if [[ -n ${S[boot.debug_locks]:-} ]]; then expect S boot.debug_locks == 1; fi
expect S stage2.after_kernel == 1
expect S dmesg.iommu_handover == 1
expect S dmesg.handover == 1
expect S dmesg.restored == 1
expect S stage2.b_translation_enabled == 1
expect S stage2.b_context_present == 1
expect S stage2.b_notes == 1
expect S stage2.b_did_kept == 1
expect S stage2.b_context_did == "${S[stage2.p_domain_id]:-?}"
expect S stage2.b_dma_running_at_reboot == 1
expect S stage2.b_dma_landed == 1
expect S stage2.b_intx_latched == 1
expect S stage2.b_irte_index == "${S[stage2.p_irte_index]:-?}"
expect S stage2.b_irte_adopted_present == 1
expect S stage2.b_irte_adopted_sid == 1
expect S stage2.b_irte_adopted_same == 1
expect S stage2.b_irtes_for_edu == 1
expect S stage2.b_msi_off_before_open == 1
expect S stage2.b_preserved_tables_dma == 1
expect S stage2.b_dma_running_at_attach == 1
expect S stage2.b_cdev_get_iommufd == -2
expect S stage2.b_cdev_bind_with_token == -95
expect S stage2.b_cdev_context_unchanged == 1
expect S stage2.b_attach_dma_landed == 1
expect S stage2.b_attach_context_present == 1
expect S stage2.b_attach_did_kept == 1
expect S stage2.b_attach_root_kept == 1
expect S dmesg.adopted == 1
expect S dmesg.adopted_in_place == 1
expect S stage2.b_listed_state == 5
expect S stage2.b_generation == 1
expect S stage2.b_open_no_token == -13
expect S stage2.b_open_wrong_token == -13
expect S stage2.b_open_with_token == 0
expect S stage2.b_state == 3
expect S stage2.b_domain_kept == 1
expect S stage2.b_marker_kept == 1
expect S stage2.b_bus_master == 1
expect S stage2.b_bar0_kept == 1
expect S stage2.b_set_msi == 0
expect S stage2.b_irq_delivered == 1
expect S stage2.b_msi_enabled == 1
expect S stage2.b_msi_same_message == 1
expect S stage2.b_msi_irte_index == "${S[stage2.p_irte_index]:-?}"
expect S stage2.b_irte_reconnected_sid == 1
expect S stage2.b_irte_debugfs_matches == 1
expect S stage2.b_irtes_for_edu_after == 1
expect S stage2.b_luo_retrieve == 0
expect S stage2.b_memfd_same_phys == 1
expect S stage2.b_unmap_adopted == -13
expect S stage2.b_map_vaddr_other_pages == -22
expect S stage2.b_map_vaddr == 0
expect S stage2.b_dma_running_at_takeover == 1
expect S stage2.b_takeover_dma_landed == 1
expect S stage2.b_buffer_holds_dma == 1
expect S stage2.b_roundtrip == 1
expect S stage2.b_roundtrip_irq == 1
expect S stage2.b_msi_counted == 1
expect S stage2.b_dma_faults == 0
expect S stage2.b_leave_wrong_token == -13
expect S stage2.b_leave == 0
expect S stage2.b_state_after_leave == 0
expect S stage2.b_listed_after == 0
expect S stage2.b_luo_finish == 0
expect S stage2.done == 1
expect S dmesg.irte_adopted == 1
expect S dmesg.irte_reconnected == 1
expect S dmesg.dmar_dma_faults == 0
expect S dmesg.dmar_ir_faults == 0
expect S dmesg.kernel_warnings == 0
echo "-- stage2x K1: FROZEN, ABORT, reclaimed with the token; PREPARE; the image corrupted (debugfs, test-only)"
expect X s2x.kexec_load == 0
expect X s2x.a_enter == 0
expect X s2x.a_exit == 0
expect X s2x.corrupt_unprepared == -16
expect X s2x.prepare == 0
expect X s2x.p_frozen_state == 4
expect X s2x.abort == 0
expect X s2x.p_thawed_state == 2
expect X s2x.r_open_wrong_token == -13
expect X s2x.r_open_with_token == 0
expect X s2x.r_state == 3
expect X s2x.r_marker_kept == 1
expect X s2x.r_bus_master == 1
expect X s2x.r_exit == 0
expect X s2x.r_state_after_exit == 2
expect X s2x.prepare2 == 0
expect X s2x.prepare2_nr_devices == 1
expect X s2x.corrupt_bogus == -22
expect X s2x.corrupt_byte == 0
expect X s2x.before_kernel_warnings == 0
echo "-- stage2x K2: the corrupted image is refused whole; the device is stopped and ordinary"
expect X s2y.after_kernel == 1
expect X s2y.dmesg_iommu_refused == 1
expect X s2y.dmesg_translation_kept == 1
expect X s2y.dmesg_translation_disabled == 0
expect X s2y.dmesg_iommu_handover == 0
expect X s2y.dmesg_vfio_refused == 1
expect X s2y.dmesg_device_stopped == 1
expect X s2y.dmesg_restored == 0
expect X s2y.dmesg_ir_refused == 1
expect X s2y.dmesg_irte_adopted == 0
expect X s2y.irtes_for_edu == 0
expect X s2y.event_rejected_image == 1
expect X s2y.event_rejected_device == 1
expect X s2y.event_errno == 71
expect X s2y.generation == 0
expect X s2y.listed == 0
expect X s2y.translation_enabled == 1
expect X s2y.bus_master == 0
expect X s2y.c_open_with_token == -2
expect X s2y.c_open_plain == 0
expect X s2y.c_state == 0
expect X s2y.kexec_load == 0
expect X s2y.a_enter == 0
expect X s2y.p_state == 2
expect X s2y.p_iommufd_parked == 1
expect X s2y.prepare == 0
expect X s2y.prepare_nr_devices == 1
expect X s2y.before_kernel_warnings == 0
echo "-- stage2x K3: a RESTORED device never opened: the fallback rebuild (test knob) on a group open, then RESET_DEVICE"
expect X s2z.after_kernel == 1
expect X s2z.dmesg_restored == 1
expect X s2z.listed_state == 5
expect X s2z.generation == 1
expect X s2z.bus_master_before == 1
expect X s2z.dmesg_irte_adopted == 1
expect X s2z.f_knob == 1
expect X s2z.f_new_did == 1
expect X s2z.f_new_root == 1
expect X s2z.f_same_page == 1
expect X s2z.f_exit == 0
expect X s2z.f_state_after == 5
expect X s2z.dmesg_rebuilt == 1
expect X s2z.dmesg_in_place == 0
expect X s2z.irtes_for_edu_before == 1
expect X s2z.reset == 0
expect X s2z.irtes_for_edu_after == 0
expect X s2z.dmesg_irte_released == 1
expect X s2z.reset_again == -16
expect X s2z.listed_after == 0
expect X s2z.event_reset == 1
expect X s2z.bus_master_after == 0
expect X s2z.c_open_with_token == -2
expect X s2z.c_open_plain == 0
expect X s2z.c_state == 0
expect X s2z.done == 1
expect X dmesg.dmar_ir_faults == 0
expect X dmesg.kernel_warnings == 0
for k in s2x.before_debug_locks s2y.before_debug_locks boot.debug_locks; do
    if [[ -n ${X[$k]:-} ]]; then expect X "$k" == 1; fi
done
handover_rejected_safe=false
[[ ${X[s2y.event_rejected_device]:-} == 1 && ${X[s2y.bus_master]:-} == 0 && ${X[s2y.translation_enabled]:-} == 1 &&
   ${X[s2y.c_open_with_token]:-} == -2 && ${X[s2y.c_open_plain]:-} == 0 ]] && handover_rejected_safe=true
restored_reset_released=false
[[ ${X[s2z.reset]:-} == 0 && ${X[s2z.event_reset]:-} == 1 && ${X[s2z.bus_master_after]:-} == 0 &&
   ${X[s2z.c_open_plain]:-} == 0 ]] && restored_reset_released=true
tables_in_place=false
[[ ${S[stage2.b_attach_did_kept]:-} == 1 && ${S[stage2.b_attach_root_kept]:-} == 1 && ${S[stage2.b_domain_kept]:-} == 1 &&
   ${S[dmesg.adopted_in_place]:-} == 1 && ${S[stage2.b_attach_dma_landed]:-} == 1 ]] && tables_in_place=true
irte_adopted=false
[[ ${S[stage2.b_irte_adopted_present]:-} == 1 && ${S[stage2.b_irte_adopted_same]:-} == 1 &&
   ${S[stage2.b_irte_adopted_sid]:-} == 1 && ${S[stage2.b_msi_same_message]:-} == 1 &&
   ${S[stage2.b_msi_irte_index]:-x} == "${S[stage2.p_irte_index]:-y}" && ${S[stage2.b_irte_debugfs_matches]:-} == 1 &&
   ${S[stage2.b_msi_counted]:-} == 1 && ${S[dmesg.irte_reconnected]:-} == 1 ]] && irte_adopted=true
irte_refused_clean=false
[[ ${X[s2y.irtes_for_edu]:-} == 0 && ${X[s2y.dmesg_ir_refused]:-} == 1 && ${X[s2z.irtes_for_edu_before]:-} == 1 &&
   ${X[s2z.irtes_for_edu_after]:-} == 0 ]] && irte_refused_clean=true
stage2=pass
((${#failures[@]} == s2_start)) || stage2=fail
printf '  freeze -> first interrupt %s ms, reboot -> userspace %s ms (TSC)\n' \
    "${S[stage2.freeze_to_irq_ms]:-?}" "${S[stage2.reboot_to_userspace_ms]:-?}"

stage1=pass
for f in "${failures[@]}"; do if [[ $f == P:stage1.* || $f == P:dmesg.dmar_dma_faults_stage1 ]]; then stage1=fail; fi; done
stage1_iommufd=pass
for f in "${failures[@]}"; do if [[ $f == P:cdev.* ]]; then stage1_iommufd=fail; fi; done

baseline_detects_loss=false
if [[ -n $baseline ]]; then
    echo "-- baseline: the same flow on the unpatched kernel"
    for k in a_enter p_dma_landed p_bus_master p_msi_enabled b0_open_no_token b_open_with_token b_marker_kept \
             b_bus_master b_dma_landed b_irq_delivered b_roundtrip; do
        printf '  %-28s %s\n' "$k" "${B[stage1.$k]:-<missing>}"
    done
    [[ ${B[stage1.done]:-} == 1 ]] || failures+=("B:stage1.done")
    if [[ ${B[stage1.b_irq_delivered]:-} == 0 || ${B[stage1.b_dma_landed]:-} == 0 ||
          ${B[stage1.b_marker_kept]:-} == 0 || ${B[stage1.p_bus_master]:-} == 0 ]]; then
        baseline_detects_loss=true
    fi
    echo "  the unpatched kernel loses: $(
        l=(); [[ ${B[stage1.b_irq_delivered]:-} == 0 ]] && l+=(interrupt)
        [[ ${B[stage1.b_dma_landed]:-} == 0 ]] && l+=("DMA data")
        [[ ${B[stage1.b_marker_kept]:-} == 0 ]] && l+=("device state (reset)")
        [[ ${B[stage1.p_bus_master]:-} == 0 ]] && l+=("bus mastering")
        echo "${l[*]:-nothing}")"
fi

num() { [[ ${1:-} =~ ^-?[0-9]+$ ]] && echo "$1" || echo null; }
device_resets=0
[[ ${P[stage1.b_marker_kept]:-0} == 1 ]] || device_resets=1
[[ ${S[stage2.b_marker_kept]:-0} == 1 ]] || device_resets=$((device_resets + 1))
irq_lost=0
[[ ${P[stage1.b_irq_delivered]:-0} == 1 ]] || irq_lost=1
[[ ${S[stage2.b_irq_delivered]:-0} == 1 ]] || irq_lost=$((irq_lost + 1))
dma_faults=$(( $(num "${P[stage1.b_dma_faults]:-0}" | sed 's/null/0/') + $(num "${P[dmesg.dmar_dma_faults_stage1]:-0}" | sed 's/null/0/') +
               $(num "${S[stage2.b_dma_faults]:-0}" | sed 's/null/0/') + $(num "${S[dmesg.dmar_dma_faults]:-0}" | sed 's/null/0/') ))

printf -- '-- timings: kernels %ss, guest program %ss, patched boot %ss, baseline boot %ss, total %ss\n' \
    "$(secs "$t0" "$t_kernels")" "$(secs "$t_kernels" "$t_guest")" "$(cat "$tmp/patched.secs")" \
    "$(cat "$tmp/baseline.secs" 2>/dev/null || echo -)" "$(secs "$t0" "$t_end")"
if ((${#failures[@]})); then echo "-- FAILED: ${failures[*]}"; else echo "-- all checks passed"; fi

ok=1
((${#failures[@]} == 0)) || ok=0
[[ -z $baseline || $baseline_detects_loss == true ]] || ok=0
printf '{"kernel":"%s","stage1":"%s","stage2":"%s","baseline_detects_loss":%s,"stage1_iommufd":"%s",' \
    "${P[boot.kernel]:-}" "$stage1" "$stage2" "$([[ -n $baseline ]] && echo "$baseline_detects_loss" || echo null)" \
    "$stage1_iommufd"
printf '"device_resets":%s,"dma_faults":%s,"irq_lost":%s,"fidelity_entries_checked":%s,' \
    "$device_resets" "$dma_faults" "$irq_lost" "$(num "${P[fidelity.entries_checked]:-}")"
printf '"conformance_failed":%s,"conformance_passed":%s,"conformance_not_applicable":%s,' \
    "$(num "${P[conformance.failed]:-}")" "$(num "${P[conformance.passed]:-}")" "$(num "${P[conformance.not_applicable]:-}")"
printf '"pending_latched_ms":%s,"baseline":{"irq_delivered":%s,"dma_landed":%s,"marker_kept":%s,"bus_master_kept":%s},' \
    "$(num "${P[stage1.p_pending_after_ms]:-}")" "$(num "${B[stage1.b_irq_delivered]:-}")" \
    "$(num "${B[stage1.b_dma_landed]:-}")" "$(num "${B[stage1.b_marker_kept]:-}")" "$(num "${B[stage1.p_bus_master]:-}")"
printf '"unowned_fault_detected":%s,"operator_reset":%s,' \
    "$([[ ${P[fault.event_dma_fault]:-} == 1 && ${P[fault.c_dma_faults]:-0} -ge 1 ]] && echo true || echo false)" \
    "$([[ ${P[fault.reset]:-} == 0 && ${P[fault.event_reset]:-} == 1 ]] && echo true || echo false)"
printf '"stage2_freeze_to_irq_ms":%s,"stage2_reboot_to_userspace_ms":%s,"stage2_boot_s":%s,' \
    "$(num "${S[stage2.freeze_to_irq_ms]:-}")" "$(num "${S[stage2.reboot_to_userspace_ms]:-}")" \
    "$(cat "$tmp/stage2.secs" 2>/dev/null || echo null)"
printf '"stage2_irte_adopted":%s,"stage2_irte_index":%s,"stage2_tables_adopted_in_place":%s,' "$irte_adopted" \
    "$(num "${S[stage2.p_irte_index]:-}")" "$tables_in_place"
printf '"stage2x_handover_rejected_safe":%s,"stage2x_restored_reset_released":%s,"stage2x_irte_clean":%s,"stage2x_boot_s":%s,' \
    "$handover_rejected_safe" "$restored_reset_released" "$irte_refused_clean" "$(cat "$tmp/stage2x.secs" 2>/dev/null || echo null)"
printf '"patched_boot_s":%s,"baseline_boot_s":%s,"total_s":%s}\n' "$(cat "$tmp/patched.secs")" \
    "$(cat "$tmp/baseline.secs" 2>/dev/null || echo null)" "$(secs "$t0" "$t_end")"
((ok == 1))
}

main "$@"; exit
