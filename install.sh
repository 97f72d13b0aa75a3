#!/bin/sh
# Installs wgcni on a Debian machine (root, Node.js/npm present). Idempotent.
#
#   ./install.sh [--prefix /usr/local/bin] [--cni-bin-dir /opt/cni/bin] [--lib-dir DIR] [--no-deps]
#                [--test-deps]   (also what the test suite uses: reference plugins, etcd, podman, ...)
#                [--systemd]     (also the units wgcni-cluster/wgcni-node.service and example configs)
#
# From a checkout it installs that checkout. Piped into sh, it first clones
# the repository named by WGCNI_REPO (and WGCNI_REF, default main):
#   curl -fsSL <release-url>/install.sh | WGCNI_REPO=<git-url> sh
set -eu

DENO_VERSION=2.9.6
PREFIX=/usr/local/bin
CNI_BIN_DIR=/opt/cni/bin
LIB_DIR=""
NO_DEPS=0
APT_PACKAGES="wireguard-tools wireguard-go iproute2 nftables iputils-ping"
TEST_PACKAGES="containernetworking-plugins etcd-server etcd-client podman runc conmon busybox-static tcpdump iperf3 openssl iptables"
TEST_DEPS=0
SYSTEMD=0

usage() {
  sed -n '2,10p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --cni-bin-dir) CNI_BIN_DIR=${2:?--cni-bin-dir needs a directory}; shift 2 ;;
    --cni-bin-dir=*) CNI_BIN_DIR=${1#*=}; shift ;;
    --lib-dir) LIB_DIR=${2:?--lib-dir needs a directory}; shift 2 ;;
    --lib-dir=*) LIB_DIR=${1#*=}; shift ;;
    --no-deps) NO_DEPS=1; shift ;;
    --test-deps) APT_PACKAGES="$APT_PACKAGES $TEST_PACKAGES"; TEST_DEPS=1; shift ;;
    --systemd) SYSTEMD=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
[ -n "$LIB_DIR" ] || LIB_DIR="$(dirname "$PREFIX")/lib/wgcni"

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and writes $PREFIX and $CNI_BIN_DIR)"

# The sources: this checkout, or a clone when piped into sh.
SRC_DIR=""
case "$0" in
  */install.sh) [ -f "$(dirname "$0")/cli/main.ts" ] && SRC_DIR=$(cd "$(dirname "$0")" && pwd) ;;
esac
if [ -z "$SRC_DIR" ]; then
  [ -n "${WGCNI_REPO:-}" ] || die "no checkout next to install.sh; set WGCNI_REPO to a git URL"
  command -v git >/dev/null || { [ "$NO_DEPS" = 1 ] || apt-get install -y --no-install-recommends git; }
  TMP_SRC=$(mktemp -d)
  trap 'rm -rf "$TMP_SRC"' EXIT
  git clone --depth 1 --branch "${WGCNI_REF:-main}" "$WGCNI_REPO" "$TMP_SRC/wgcni"
  SRC_DIR="$TMP_SRC/wgcni"
fi

# 1. System packages.
if [ "$NO_DEPS" = 0 ]; then
  missing=""
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >/dev/null
  fi
fi

# promtool (checks metrics text in the tests) comes with Debian's prometheus
# server package; only the tool is taken from it, so no server is installed.
if [ "$TEST_DEPS" = 1 ] && [ "$NO_DEPS" = 0 ] && ! command -v promtool >/dev/null 2>&1; then
  say "installing promtool (from Debian's prometheus package, unpacked, not installed)"
  PROM_TMP=$(mktemp -d)
  (cd "$PROM_TMP" && apt-get download -qq prometheus >/dev/null && dpkg -x prometheus_*.deb x) ||
    { rm -rf "$PROM_TMP"; die "cannot download Debian's prometheus package for promtool"; }
  mkdir -p "$PREFIX"
  install -m 0755 "$PROM_TMP/x/usr/bin/promtool" "$PREFIX/promtool"
  rm -rf "$PROM_TMP"
fi

# 2. Deno, pinned, from npm when the right one is not on PATH.
DENO=""
if command -v deno >/dev/null 2>&1 && deno --version 2>/dev/null | head -1 | grep -q " $DENO_VERSION "; then
  DENO=$(command -v deno)
elif [ -x "$LIB_DIR/deno/node_modules/.bin/deno" ] &&
  "$LIB_DIR/deno/node_modules/.bin/deno" --version | head -1 | grep -q " $DENO_VERSION "; then
  DENO="$LIB_DIR/deno/node_modules/.bin/deno"
else
  command -v npm >/dev/null || die "npm is needed to install Deno $DENO_VERSION"
  say "installing deno $DENO_VERSION from npm"
  mkdir -p "$LIB_DIR/deno"
  npm install --silent --no-fund --no-audit --prefix "$LIB_DIR/deno" "deno@$DENO_VERSION" >/dev/null
  DENO="$LIB_DIR/deno/node_modules/.bin/deno"
  "$DENO" --version >/dev/null || die "deno from npm does not run"
fi
DENO=$(readlink -f "$DENO")
mkdir -p "$PREFIX"
if ! command -v deno >/dev/null 2>&1; then
  ln -sf "$DENO" "$PREFIX/deno"
  say "linked $PREFIX/deno"
fi

# 3. Sources and their modules, cached for offline runs.
mkdir -p "$LIB_DIR"
STAGE="$LIB_DIR/src.new"
rm -rf "$STAGE"
mkdir -p "$STAGE"
for f in cli modes lib deno.json deno.lock; do
  [ -e "$SRC_DIR/$f" ] || die "missing $f in $SRC_DIR"
  cp -R "$SRC_DIR/$f" "$STAGE/"
done
export DENO_DIR="$LIB_DIR/deno-dir" DENO_NO_UPDATE_CHECK=1
# Every module, so that modes loaded on demand are cached too.
(cd "$STAGE" && find cli modes lib -name '*.ts' -print0 |
  xargs -0 "$DENO" cache --quiet --frozen --config deno.json) || die "caching modules failed"
rm -rf "$LIB_DIR/src"
mv "$STAGE" "$LIB_DIR/src"
SRC="$LIB_DIR/src"

# 4. The executable: a compiled binary where that works, else a launcher.
KIND=""
TMP_BIN="$PREFIX/.wgcni.new.$$"
if (cd "$SRC" && timeout 300 "$DENO" compile --quiet -A --frozen --config deno.json \
  --include modes/cni/main.ts --include cli/commands.ts -o "$TMP_BIN" cli/main.ts) >/dev/null 2>&1 &&
  "$TMP_BIN" version >/dev/null 2>&1; then
  KIND="compiled binary (deno compile)"
else
  rm -f "$TMP_BIN"
  cat >"$TMP_BIN" <<LAUNCHER
#!/bin/sh
# wgcni launcher: runs the cached sources in $SRC offline.
export DENO_DIR="$LIB_DIR/deno-dir" DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1 WGCNI_EXECUTABLE="$PREFIX/wgcni"
# The plugin path imports no package: skip the config, import map and lock (a few ms per pod).
if [ -n "\${CNI_COMMAND+set}" ]; then
  exec "$DENO" run -A --cached-only --no-config --no-lock "$SRC/cli/main.ts" "\$@"
fi
exec "$DENO" run -A --cached-only --frozen --config "$SRC/deno.json" "$SRC/cli/main.ts" "\$@"
LAUNCHER
  KIND="launcher (deno run --cached-only of $SRC; deno compile cannot fetch its runtime here)"
fi
chmod 0755 "$TMP_BIN"
mv -f "$TMP_BIN" "$PREFIX/wgcni"

mkdir -p "$CNI_BIN_DIR"
ln -sf "$PREFIX/wgcni" "$CNI_BIN_DIR/wgcni"

# 5. Service units and example configs (never replacing a config in place).
if [ "$SYSTEMD" = 1 ]; then
  mkdir -p /etc/systemd/system /etc/wgcni
  for u in "$SRC_DIR"/dist/systemd/*.service; do
    sed "s#/usr/local/bin/wgcni#$PREFIX/wgcni#g" "$u" >"/etc/systemd/system/$(basename "$u")"
  done
  for c in "$SRC_DIR"/dist/examples/*.yaml; do
    t="/etc/wgcni/$(basename "$c")"
    [ -e "$t" ] || install -m 0600 "$c" "$t"
  done
  say "installed wgcni-cluster.service and wgcni-node.service (not enabled); configs in /etc/wgcni"
  command -v systemctl >/dev/null 2>&1 && systemctl daemon-reload 2>/dev/null || true
fi

"$PREFIX/wgcni" version >/dev/null || die "installed wgcni does not run"
say "installed $PREFIX/wgcni: $KIND"
say "linked $CNI_BIN_DIR/wgcni -> $PREFIX/wgcni"
