# Shared by scripts/*.sh. Installs what is missing with apt (Debian 12), quietly.
KEEPALIVE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEEPALIVE_BASE_PACKAGES=(cmake ninja-build g++ ccache pkg-config libfmt-dev libmsgsl-dev
  librange-v3-dev doctest-dev libbenchmark-dev)

log() { printf '[keepalive] %s\n' "$*" >&2; }

ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# configure_build DIR [cmake args...]: configure (once) and build with Ninja.
configure_build() {
  local dir=$1; shift
  cmake -S "$KEEPALIVE_ROOT" -B "$dir" -G Ninja "$@" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; return 1; }
  cmake --build "$dir"
}
