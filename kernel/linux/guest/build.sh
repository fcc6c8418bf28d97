#!/usr/bin/env bash
# Builds the static guest test program with the host g++ (C++20), from the
# project's library sources (abi ops, types, errors, the Linux syscall seam)
# and its conformance suite. fmt is used header-only (no static libfmt here).
# Objects are cached by the hash of their source and of every header, and
# compiled two at a time.
# Usage: build.sh OUT_DIR   -> OUT_DIR/ka_guest (stdout: its path)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
OUT=${1:?usage: build.sh OUT_DIR}
CXX=${CXX:-g++}
JOBS=${KEEPALIVE_GUEST_JOBS:-2}
mkdir -p "$OUT/obj"

sources=(
    "$HERE/ka_guest.cpp" "$HERE/vfio_edu.cpp" "$HERE/stage1.cpp" "$HERE/conformance.cpp" "$HERE/fidelity.cpp"
    "$HERE/unowned_fault.cpp" "$HERE/unbind.cpp" "$HERE/cdev.cpp" "$HERE/stage2.cpp"
    "$ROOT/src/error.cpp" "$ROOT/src/types.cpp" "$ROOT/src/syscalls_linux.cpp" "$ROOT/src/abi_ops.cpp"
    "$ROOT/tests/conformance/conformance.cpp"
)
flags=(-std=c++20 -O2 -pthread -DFMT_HEADER_ONLY
       -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion -Werror
       -I"$ROOT/include" -I"$ROOT/uapi" -I"$ROOT/tests/conformance" -I"$HERE")

headers=$( { "$CXX" --version | head -n1; printf '%s\n' "${flags[@]}";
             find "$ROOT/include" "$ROOT/uapi" "$ROOT/tests/conformance" "$HERE" -name '*.h*' -type f |
                 LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-16)
objects=() todo=()
for s in "${sources[@]}"; do
    o=$OUT/obj/$(basename "$s" .cpp)-$( { echo "$headers"; cat "$s"; } | sha256sum | cut -c1-16).o
    objects+=("$o")
    [[ -f $o ]] || todo+=("$s=$o")
done
if ((${#todo[@]})); then
    export CXX
    printf '%s\n' "${todo[@]}" |
        xargs -P "$JOBS" -I{} bash -c 's=${1%%=*} o=${1#*=}; "$CXX" "${@:2}" -c "$s" -o "$o.tmp" && mv "$o.tmp" "$o"' \
            _ {} "${flags[@]}" >&2
fi
"$CXX" -static -pthread "${objects[@]}" -o "$OUT/ka_guest.tmp" >&2
mv "$OUT/ka_guest.tmp" "$OUT/ka_guest"
echo "$OUT/ka_guest"
