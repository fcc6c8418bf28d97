#!/usr/bin/env bash
# Patch 0009 adds kernel/linux/kvm/keepalive_pi.h to the kernel as
# arch/x86/kvm/vmx/keepalive_pi.h: check the two are identical, byte for byte.
# Exit 0 if they are; the diff goes to stderr otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATCH=$(ls "$HERE"/../patches/0009-*.patch | head -n1)
HEADER=$HERE/keepalive_pi.h
KPATH=arch/x86/kvm/vmx/keepalive_pi.h

extracted=$(mktemp)
trap 'rm -f "$extracted"' EXIT
awk -v want="diff --git a/$KPATH b/$KPATH" '
    $0 == want { infile = 1; next }
    infile && /^diff --git / { exit }
    infile && /^@@ -0,0 \+1,[0-9]+ @@/ { n = $0; sub(/^@@ -0,0 \+1,/, "", n); sub(/ .*/, "", n); left = n + 0; next }
    infile && left > 0 { if (substr($0, 1, 1) != "+") { print "not an addition: " $0 > "/dev/stderr"; exit 2 }
                         print substr($0, 2); left--; if (left == 0) found = 1 }
    END { exit found ? 0 : 1 }' "$PATCH" >"$extracted" || { echo "no new-file hunk for $KPATH in $PATCH" >&2; exit 1; }
if cmp -s "$extracted" "$HEADER"; then
    echo "keepalive_pi.h: patch 0009 and kernel/linux/kvm agree ($(wc -c <"$HEADER") bytes)" >&2
else
    diff -u "$HEADER" "$extracted" >&2 || true
    exit 1
fi
