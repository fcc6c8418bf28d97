#!/usr/bin/env bash
# Reproducible, cached build of Debian's linux-source-7.3 (trixie-backports):
# tinyconfig + config.fragment + patches/*.patch -> bzImage.
# stdout: the bzImage path only (last line). Everything else goes to stderr.
#
#   build-kernel.sh              the patched kernel
#   build-kernel.sh --pristine   the same kernel without patches/*.patch (the
#                                baseline): its own source worktree and build
#                                directory, fragment lines for symbols that
#                                only the patches add are left out
#
# Environment:
#   KEEPALIVE_KERNEL_CACHE    cache root (default /var/cache/keepalive-kernel)
#   KEEPALIVE_KERNEL_JOBS     make -j (default 2)
#   KEEPALIVE_KERNEL_REFRESH  1: re-resolve the source package even if a .deb is cached
#   KEEPALIVE_DEBIAN_MIRROR   mirror URI override (default: derived from /etc/apt)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KEEPALIVE_KERNEL_CACHE:-/var/cache/keepalive-kernel}
JOBS=${KEEPALIVE_KERNEL_JOBS:-2}
SRC_PKG=linux-source-7.3
SUITE=trixie-backports
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
FRAGMENT=$HERE/config.fragment
PATCH_DIR=$HERE/patches
PRISTINE=0
LATEST=bzImage  # images/$LATEST -> the newest image of this variant
case "${1:-}" in
    --pristine) PRISTINE=1 LATEST=bzImage-pristine ;;
    "") ;;
    *) echo "usage: $0 [--pristine]" >&2; exit 2 ;;
esac
PACKAGES=(qemu-system-x86 qemu-utils busybox-static kexec-tools cpio flex bison
          libelf-dev bc dwarves kmod libssl-dev xz-utils gcc make git perl)

log() { printf '[build-kernel +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[build-kernel +%ss] error: %s\n' "$SECONDS" "$*" >&2; exit 1; }
as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root for: $*"; fi
}

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return
    log "installing: ${missing[*]}"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# "uri suite" for every enabled binary entry of the system's apt sources,
# one-line (.list) and deb822 (.sources) formats.
apt_source_entries() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk '/^[[:space:]]*deb[[:space:]]/ {
                 sub(/^[[:space:]]*deb[[:space:]]+/, "")
                 if ($0 ~ /^\[/) sub(/^\[[^]]*\][[:space:]]*/, "")
                 print $1, $2 }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk 'function flush(  n, m, i, j, U, S) {
                 if (f["types"] ~ /(^| )deb( |$)/ && tolower(f["enabled"]) !~ /^(no|false|0)$/) {
                     n = split(f["uris"], U, " "); m = split(f["suites"], S, " ")
                     for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print U[i], S[j]
                 }
                 delete f; key = ""
             }
             /^#/ { next }
             /^[[:space:]]*$/ { flush(); next }
             /^[[:space:]]/ { if (key != "") { v = $0; gsub(/^[[:space:]]+|[[:space:]]+$/, "", v); f[key] = f[key] " " v }; next }
             /^[^[:space:]:]+:/ {
                 key = tolower(substr($0, 1, index($0, ":") - 1))
                 v = substr($0, index($0, ":") + 1); gsub(/^[[:space:]]+|[[:space:]]+$/, "", v)
                 f[key] = v }
             END { flush() }' "$f"
    done
}

# The system's Debian mirror: the URI serving the release suite itself
# (so not -security), falling back to its -updates/-backports suites.
derive_mirror() {
    if [[ -n ${KEEPALIVE_DEBIAN_MIRROR:-} ]]; then echo "$KEEPALIVE_DEBIAN_MIRROR"; return; fi
    local codename entries uri
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release"
    entries=$(apt_source_entries)
    entries=$(awk '$1 ~ /^https?:\/\//' <<<"$entries")
    uri=$(awk -v c="$codename" '$2 == c { print $1; exit }' <<<"$entries")
    [[ -n $uri ]] || uri=$(awk -v c="$codename" '$2 == c "-updates" || $2 == c "-backports" { print $1; exit }' <<<"$entries")
    [[ -n $uri ]] || die "no apt source for suite '$codename' (set KEEPALIVE_DEBIAN_MIRROR)"
    echo "${uri%/}"
}

# Download linux-source-7.3 through a private apt configuration; /etc/apt is only read.
fetch_source_deb() {
    local deb_dir=$CACHE/debs apt_dir=$CACHE/apt deb
    mkdir -p "$deb_dir"
    deb=$(find "$deb_dir" -maxdepth 1 -name "${SRC_PKG}_*.deb" | sort -V | tail -n1)
    if [[ -n $deb && -z ${KEEPALIVE_KERNEL_REFRESH:-} ]]; then echo "$deb"; return; fi

    local mirror
    mirror=$(derive_mirror)
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    # Trixie's keys (13/trixie) are in bookworm's debian-archive-keyring >= 2023.3+deb12u1.
    printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$mirror" "$SUITE" >"$apt_dir/sources.list"
    cat >"$apt_dir/apt.conf" <<'EOF'
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
    local apt=(apt-get -q -c "$apt_dir/apt.conf"
               -o Dir::Etc::SourceList="$apt_dir/sources.list"
               -o Dir::Etc::SourceParts=/dev/null
               -o Dir::State::Lists="$apt_dir/lists"
               -o Dir::Cache="$apt_dir/cache")
    log "resolving $SRC_PKG from $SUITE (mirror from /etc/apt)"
    "${apt[@]}" update >&2 || die "private apt-get update failed (see above)"
    local tmp
    tmp=$(mktemp -d "$deb_dir/.dl.XXXXXX")
    (cd "$tmp" && "${apt[@]}" download "$SRC_PKG" >&2) || { rm -rf "$tmp"; die "apt-get download $SRC_PKG failed"; }
    mv "$tmp"/*.deb "$deb_dir/"
    rm -rf "$tmp"
    find "$deb_dir" -maxdepth 1 -name "${SRC_PKG}_*.deb" | sort -V | tail -n1
}

# Build timestamp: mtime of the source tarball in the .deb (Debian sets it from the changelog).
# Must parse with date(1): usr/gen_initramfs.sh stamps the built-in cpio with it.
source_date() {
    local stamp
    stamp=$(dpkg-deb --fsys-tarfile "$1" | TZ=UTC tar -tv --full-time "./usr/src/$SRC_PKG.tar.xz" | awk '{ print $4, $5 }')
    TZ=UTC date -d "$stamp UTC"
}

git_q() { git -C "$1" -c core.autocrlf=false -c advice.detachedHead=false "${@:2}"; }

# Pristine source as a git tree (one commit), unpacked once per package version.
ensure_pristine_tree() {
    local deb=$1 src=$2
    [[ -f $src.pristine ]] && return
    log "unpacking $(basename "$deb") into $src"
    rm -rf "$src" "$src.applied"
    mkdir -p "$src"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$SRC_PKG.tar.xz" | tar -xJ -C "$src" --strip-components=1
    [[ -f $src/Makefile && -d $src/kernel ]] || die "unexpected tarball layout in $deb"
    log "recording pristine tree in git"
    git_q "$src" init -q
    git_q "$src" add -A -f
    git_q "$src" -c user.name=keepalive -c user.email=keepalive@localhost \
        commit -q -m "pristine $(basename "$deb")"
    git_q "$src" rev-parse HEAD >"$src.pristine"
}

# The baseline's source: a worktree of the main tree's git repository at the pristine commit.
ensure_pristine_worktree() {
    local main=$1 wt=$2
    [[ -e $wt/.git ]] && return
    log "adding worktree $wt at the pristine commit"
    rm -rf "$wt"
    git_q "$main" worktree prune
    git_q "$main" worktree add -q --detach "$wt" "$(cat "$main.pristine")"
    cp "$main.pristine" "$wt.pristine"
}

# Fragment lines whose symbol the (unpatched) tree does not define are dropped.
fragment_for_tree() {
    local src=$1 out=$2 line sym
    local -A defined=()
    while read -r sym; do defined[$sym]=1; done < <(
        grep -rhs --include='Kconfig*' -E '^[[:space:]]*(menu)?config [A-Za-z0-9_]+[[:space:]]*$' "$src" |
            awk '{ print $2 }')
    : >"$out"
    while IFS= read -r line; do
        sym=
        if [[ $line =~ ^CONFIG_([A-Za-z0-9_]+)= ]]; then sym=${BASH_REMATCH[1]}
        elif [[ $line =~ ^#\ CONFIG_([A-Za-z0-9_]+)\ is\ not\ set$ ]]; then sym=${BASH_REMATCH[1]}; fi
        if [[ -n $sym && -z ${defined[$sym]:-} ]]; then
            log "pristine: dropping '$line' (defined by the patches)"
            continue
        fi
        printf '%s\n' "$line" >>"$out"
    done <"$FRAGMENT"
}

# Bring the tree to pristine + patches; "$src.applied" holds the resulting git tree id.
ensure_patched_tree() {
    local src=$1 patches=("${@:2}") want_state
    want_state=$(patch_set_hash "${patches[@]}")
    if [[ -f $src.applied ]] && [[ $(sed -n 1p "$src.applied") == "$want_state" ]] &&
       [[ -z $(git_q "$src" status --porcelain --untracked-files=all --ignored) ]] &&
       [[ $(git_q "$src" write-tree) == "$(sed -n 2p "$src.applied")" ]]; then
        return
    fi
    rm -f "$src.applied"
    log "resetting tree to pristine, applying ${#patches[@]} patch(es)"
    git_q "$src" reset -q --hard "$(cat "$src.pristine")"
    git_q "$src" clean -q -f -d -x
    local p
    for p in "${patches[@]}"; do
        log "  apply $(basename "$p")"
        git_q "$src" apply --index --whitespace=nowarn "$p" || die "patch does not apply: $p"
    done
    git_q "$src" add -A -f
    printf '%s\n%s\n' "$want_state" "$(git_q "$src" write-tree)" >"$src.applied"
}

patch_set_hash() {
    local p
    { for p in "$@"; do basename "$p"; sha256sum <"$p"; done; } | sha256sum | cut -d' ' -f1
}

# Every CONFIG_ line of the fragment must hold in .config, and every symbol must exist.
verify_config() {
    local src=$1 config=$2 bad=0 line sym want
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            sym=${BASH_REMATCH[1]} want="$line"
            grep -qxF -- "$want" "$config" && continue
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym=${BASH_REMATCH[1]}
            grep -q "^$sym=" "$config" || continue
        else
            continue
        fi
        bad=1
        if ! grep -rqsx --include='Kconfig*' -E "[[:space:]]*(menu)?config ${sym#CONFIG_}" "$src"; then
            log "config: $sym is not a Kconfig symbol of this tree"
        else
            log "config: wanted '$line', got '$(grep -E "^$sym=|^# $sym is not set" "$config" || echo "(absent: dependencies unmet)")'"
        fi
    done <"$FRAGMENT"
    ((bad == 0)) || die "config fragment not satisfied by olddefconfig"
}

main() {
    [[ -f $FRAGMENT ]] || die "missing $FRAGMENT"
    if ! mkdir -p "$CACHE" 2>/dev/null || [[ ! -w $CACHE ]]; then
        die "cache $CACHE not writable (set KEEPALIVE_KERNEL_CACHE)"
    fi
    exec 9>"$CACHE/.lock"
    flock 9

    ensure_packages
    local deb deb_ver deb_sha
    deb=$(fetch_source_deb)
    deb_ver=$(dpkg-deb -f "$deb" Version)
    deb_sha=$(sha256sum <"$deb" | cut -d' ' -f1)

    local patches=()
    shopt -s nullglob
    ((PRISTINE)) || patches=("$PATCH_DIR"/*.patch)
    shopt -u nullglob
    if ((${#patches[@]})); then
        mapfile -t patches < <(printf '%s\n' "${patches[@]}" | LC_ALL=C sort)
    fi

    local key
    key=$({
        echo "deb $deb_sha"
        echo "patches $(patch_set_hash "${patches[@]}")"
        echo "fragment $(sha256sum <"$FRAGMENT")"
        echo "script $(sha256sum <"${BASH_SOURCE[0]}")"
        echo "gcc $(gcc --version | head -n1)"
        if ((PRISTINE)); then echo "variant pristine"; fi
    } | sha256sum | cut -c1-16)
    local image=$CACHE/images/bzImage-$key
    if [[ -f $image ]]; then
        log "cache hit ($SRC_PKG $deb_ver, key $key)"
        ln -sfn "bzImage-$key" "$CACHE/images/$LATEST"
        echo "$image"
        return
    fi

    local src=$CACHE/src/$SRC_PKG-$deb_ver out=$CACHE/build/$SRC_PKG-$deb_ver
    mkdir -p "$CACHE/src" "$CACHE/images"
    ensure_pristine_tree "$deb" "$src"
    if ((PRISTINE)); then
        ensure_pristine_worktree "$src" "$src-pristine"
        src=$src-pristine out=$out-pristine
    fi
    mkdir -p "$out"
    ensure_patched_tree "$src" "${patches[@]}"
    if ((PRISTINE)); then
        fragment_for_tree "$src" "$out/config.fragment"
        FRAGMENT=$out/config.fragment
    fi

    KBUILD_BUILD_TIMESTAMP=$(source_date "$deb") || die "cannot read the source date of $deb"
    export KBUILD_BUILD_TIMESTAMP KBUILD_BUILD_USER=keepalive \
           KBUILD_BUILD_HOST=keepalive KBUILD_BUILD_VERSION=1
    local mk=(make -C "$src" O="$out" ARCH=x86_64 LOCALVERSION=)
    log "configuring: tinyconfig + $(basename "$FRAGMENT")"
    "${mk[@]}" -s tinyconfig >&2
    (cd "$out" && "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$FRAGMENT") \
        >"$out/merge_config.log" 2>&1 || { cat "$out/merge_config.log" >&2; die "merge_config.sh failed"; }
    "${mk[@]}" -s olddefconfig >&2
    verify_config "$src" "$out/.config"

    log "building bzImage (-j$JOBS) in $out"
    local t0=$SECONDS
    "${mk[@]}" -j"$JOBS" bzImage >&2
    log "build took $((SECONDS - t0)) s"

    cp "$out/arch/x86/boot/bzImage" "$image.tmp"
    cp "$out/.config" "$CACHE/images/config-$key"
    cp "$out/System.map" "$CACHE/images/System.map-$key"
    mv "$image.tmp" "$image"
    ln -sfn "bzImage-$key" "$CACHE/images/$LATEST"
    echo "$image"
}

main "$@"; exit
