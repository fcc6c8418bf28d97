#!/usr/bin/env bash
# Boots the testbed kernel under QEMU/TCG (q35 + intel-iommu with interrupt remapping + edu),
# binds edu to vfio-pci inside the guest and checks the VFIO/iommufd/LUO device nodes and
# DMAR/IR state. Last stdout line: one JSON object. Exit status 0 only if every check holds.
#
# Environment:
#   KEEPALIVE_KERNEL_IMAGE   bzImage to boot (default: built/reused by build-kernel.sh)
#   KEEPALIVE_BOOT_TIMEOUT   seconds before QEMU is killed (default 120)
#   KEEPALIVE_QEMU_EXTRA     extra QEMU arguments, split on whitespace (e.g. "-cpu max")
#   KEEPALIVE_KERNEL_CACHE   as for build-kernel.sh; the serial log is kept there
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KEEPALIVE_KERNEL_CACHE:-/var/cache/keepalive-kernel}
TIMEOUT=${KEEPALIVE_BOOT_TIMEOUT:-120}
BUSYBOX=/bin/busybox

log() { printf '[boot-smoke] %s\n' "$*" >&2; }
die() { printf '[boot-smoke] error: %s\n' "$*" >&2; exit 1; }

kernel=${KEEPALIVE_KERNEL_IMAGE:-}
if [[ -z $kernel ]]; then
    kernel=$("$HERE/build-kernel.sh" | tail -n1)
fi
[[ -f $kernel ]] || die "no kernel image: '$kernel'"
if [[ ! -x $BUSYBOX ]] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX missing or not static (install busybox-static)"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"

# Guest side. Report lines are "KA: key=value"; nothing else starts with "KA: ".
cat >"$root/init" <<'EOF'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox grep -q '^devtmpfs /dev ' /proc/mounts || /bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
# Kernel messages stay in the ring buffer (dumped at the end), out of the report lines.
dmesg -n 1
mount -t sysfs sysfs /sys
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp

yn() { if "$@"; then echo 1; else echo 0; fi; }
logged() { dmesg | grep -q "$1"; }

edu=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && edu=${d##*/}
done
group=
driver=
if [ -n "$edu" ]; then
    dev=/sys/bus/pci/devices/$edu
    [ -e "$dev/driver" ] && echo "$edu" >"$dev/driver/unbind"
    echo vfio-pci >"$dev/driver_override"
    echo "$edu" >/sys/bus/pci/drivers_probe
    [ -e "$dev/driver" ] && driver=$(basename "$(readlink "$dev/driver")")
    [ -e "$dev/iommu_group" ] && group=$(basename "$(readlink "$dev/iommu_group")")
fi

echo "KA: begin"
echo "KA: kernel=$(uname -r)"
echo "KA: edu=${edu:-none}"
echo "KA: edu_driver=${driver:-none}"
echo "KA: iommu_group=${group:-none}"
echo "KA: vfio_group=$(yn test -n "$group" -a -c "/dev/vfio/$group")"
echo "KA: vfio_cdev=$(yn test -c /dev/vfio/devices/vfio0)"
echo "KA: iommufd=$(yn test -c /dev/iommu)"
echo "KA: liveupdate=$(yn test -c /dev/liveupdate)"
echo "KA: dmar_enabled=$(yn logged 'Intel(R) Virtualization Technology for Directed I/O')"
echo "KA: ir_enabled=$(yn logged 'DMAR-IR: Enabled IRQ remapping')"
echo "KA: ir_mode=$(dmesg | sed -n 's/.*DMAR-IR: Enabled IRQ remapping in \([a-z0-9]*\) mode.*/\1/p' | head -n1)"
echo "KA: dmar_debugfs=$(yn test -d /sys/kernel/debug/iommu/intel)"
echo "KA: uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "KA: end"
dmesg | grep -E 'DMAR|liveupdate|KHO|vfio' | sed 's/^/dmesg| /'
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9n) >"$tmp/initrd.gz"

mkdir -p "$CACHE"
serial=$CACHE/boot-smoke.serial.log
# shellcheck disable=SC2054 # commas belong to QEMU option values
qemu=(qemu-system-x86_64
      -machine q35,kernel-irqchip=split -accel tcg
      -device intel-iommu,intremap=on -device edu
      -m 1G -smp 1 -nographic -no-reboot
      -kernel "$kernel" -initrd "$tmp/initrd.gz"
      -append "console=ttyS0 intel_iommu=on liveupdate=1 panic=-1")
read -r -a extra <<<"${KEEPALIVE_QEMU_EXTRA:-}"
qemu+=("${extra[@]}")
log "booting $(basename "$kernel") (timeout ${TIMEOUT}s), serial log: $serial"

t_start=$EPOCHREALTIME
: >"$tmp/t_begin"
set +e
timeout --kill-after=5 "$TIMEOUT" "${qemu[@]}" </dev/null 2>&1 |
    while IFS= read -r line; do
        line=${line%$'\r'}
        [[ $line == *"KA: begin"* ]] && echo "$EPOCHREALTIME" >"$tmp/t_begin"
        printf '%s\n' "$line"
    done >"$serial"
qemu_rc=${PIPESTATUS[0]}
set -e
t_end=$EPOCHREALTIME

declare -A r=()
while IFS= read -r line; do
    [[ $line =~ KA:\ ([a-z_]+)=(.*)$ ]] && r[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
done <"$serial"

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
boot_s=null
[[ -s $tmp/t_begin ]] && boot_s=$(secs "$t_start" "$(cat "$tmp/t_begin")")
total_s=$(secs "$t_start" "$t_end")

ok=1
[[ $qemu_rc -eq 0 ]] || { ok=0; log "qemu exited with $qemu_rc (124: timeout)"; }
grep -q 'KA: end' "$serial" || { ok=0; log "no complete report in serial output"; }
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"; }
json="{\"kernel\":$(json_str "${r[kernel]:-}")"
for key in vfio_group vfio_cdev iommufd liveupdate dmar_enabled ir_enabled; do
    if [[ ${r[$key]:-} == 1 ]]; then json+=",\"$key\":true"
    else json+=",\"$key\":false"; ok=0; log "check failed: $key"; fi
done
[[ ${r[edu_driver]:-} == vfio-pci ]] || { ok=0; log "edu not bound to vfio-pci"; }
for key in ir_mode edu_driver iommu_group; do json+=",\"$key\":$(json_str "${r[$key]:-}")"; done
uptime=null
[[ ${r[uptime]:-} =~ ^[0-9]+(\.[0-9]+)?$ ]] && uptime=${r[uptime]}
json+=",\"guest_uptime_s\":$uptime,\"boot_s\":$boot_s,\"total_s\":$total_s}"

if ((ok == 0)); then
    log "FAILED; last serial lines:"
    tail -n 40 "$serial" >&2
fi
echo "$json"
((ok == 1))
