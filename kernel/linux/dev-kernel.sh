#!/usr/bin/env bash
# Developer loop for the patch series, next to build-kernel.sh's reproducible
# build (which resets its tree to pristine + patches/*.patch and would discard
# uncommitted edits). Works in its own git worktree and build directory:
#
#   dev-kernel.sh setup    worktree <cache>/dev/linux, branch keepalive =
#                          pristine + patches/*.patch (git am); kept if present
#   dev-kernel.sh build    incremental bzImage in <cache>/dev/build (stdout: path)
#   dev-kernel.sh export   git format-patch pristine..keepalive -> patches/ (per NNNN;
#                          never deletes a patch the branch does not carry)
#   dev-kernel.sh test     test.sh against the dev image (baseline as usual)
#   dev-kernel.sh build-debug   the same with debug.fragment (lockdep...) in
#                          <cache>/dev/build-debug; test-debug runs test.sh on it
#
# Commit in the worktree (git -C <cache>/dev/linux commit ...), then export.
# Environment: KEEPALIVE_KERNEL_CACHE, KEEPALIVE_KERNEL_JOBS (as build-kernel.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KEEPALIVE_KERNEL_CACHE:-/var/cache/keepalive-kernel}
JOBS=${KEEPALIVE_KERNEL_JOBS:-2}
DEV=$CACHE/dev
WT=$DEV/linux
OUT=$DEV/build

log() { printf '[dev-kernel] %s\n' "$*" >&2; }
die() { printf '[dev-kernel] error: %s\n' "$*" >&2; exit 1; }

main_tree() {
    local t
    t=$(find "$CACHE/src" -maxdepth 1 -name 'linux-source-7.3-*.pristine' | sort -V | tail -n1)
    [[ -n $t ]] || die "no pristine tree: run build-kernel.sh once"
    echo "${t%.pristine}"
}
pristine_commit() { cat "$(main_tree).pristine"; }
git_wt() { git -C "$WT" -c user.name="Keepalive Project" -c user.email=keepalive@localhost "$@"; }

setup() {
    if [[ -e $WT/.git ]]; then log "worktree $WT exists"; return; fi
    mkdir -p "$DEV"
    git -C "$(main_tree)" worktree prune
    git -C "$(main_tree)" worktree add -q -B keepalive "$WT" "$(pristine_commit)"
    shopt -s nullglob
    local patches=("$HERE"/patches/*.patch)
    ((${#patches[@]} == 0)) || git_wt am -q "${patches[@]}"
    log "worktree $WT: $(git_wt log --oneline "$(pristine_commit)"..HEAD | wc -l) patch(es) on pristine"
}

build() {
    local fragments=("$HERE/config.fragment")
    if [[ ${1:-} == debug ]]; then OUT=$DEV/build-debug; fragments+=("$HERE/debug.fragment"); fi
    [[ -e $WT/.git ]] || setup
    mkdir -p "$OUT"
    export KBUILD_BUILD_USER=keepalive KBUILD_BUILD_HOST=keepalive KBUILD_BUILD_VERSION=1
    local mk=(make -C "$WT" O="$OUT" ARCH=x86_64 LOCALVERSION=)
    if [[ ! -f $OUT/.config || $HERE/config.fragment -nt $OUT/.config || $HERE/debug.fragment -nt $OUT/.config ]]; then
        log "configuring: tinyconfig + ${fragments[*]##*/}"
        "${mk[@]}" -s tinyconfig >&2
        (cd "$OUT" && "$WT/scripts/kconfig/merge_config.sh" -m -O "$OUT" "$OUT/.config" "${fragments[@]}") \
            >"$OUT/merge_config.log" 2>&1 || die "merge_config.sh failed (see $OUT/merge_config.log)"
        "${mk[@]}" -s olddefconfig >&2
    fi
    "${mk[@]}" -j"$JOBS" -s bzImage >&2
    echo "$OUT/arch/x86/boot/bzImage"
}

# Writes one NNNN-*.patch per commit of the branch (unnumbered subjects, zero From
# hash: a patch's bytes depend on its own commit only). A patch already in patches/
# with the same NNNN keeps its file name (other files refer to it: 0009's is read by
# tests/kvm_pi); patches whose NNNN the branch does not have are never touched.
export_patches() {
    [[ -z $(git_wt status --porcelain --untracked-files=no) ]] || die "uncommitted changes in $WT"
    local tmpd p n dest olds
    tmpd=$(mktemp -d)
    git_wt format-patch -q --no-signature --no-numbered --zero-commit -o "$tmpd" "$(pristine_commit)..keepalive"
    shopt -s nullglob
    for p in "$tmpd"/*.patch; do
        n=$(basename "$p"); n=${n%%-*}
        olds=("$HERE"/patches/"$n"-*.patch)
        ((${#olds[@]} <= 1)) || die "more than one patches/$n-*.patch"
        dest=${olds[0]:-$HERE/patches/$(basename "$p")}
        if cmp -s "$p" "$dest"; then log "unchanged $(basename "$dest")"
        else cp "$p" "$dest"; log "wrote $(basename "$dest")"; fi
    done
    rm -rf "$tmpd"
}

case "${1:-}" in
    setup) setup ;;
    build) build ;;
    export) export_patches ;;
    test) KEEPALIVE_KERNEL_IMAGE=$(build) exec "$HERE/test.sh" ;;
    build-debug) build debug ;;
    test-debug) KEEPALIVE_KERNEL_IMAGE=$(build debug) exec "$HERE/test.sh" ;;
    *) echo "usage: $0 setup|build|export|test|build-debug|test-debug" >&2; exit 2 ;;
esac
