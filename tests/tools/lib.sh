# shellcheck shell=bash disable=SC2034  # sourced by tests/tools/build*
# Shared by tests/tools/build and tests/tools/build-helm: the cache root of tests/cluster, the
# pinned versions, a lock and an atomic "build into tmp, stamp, move into place" helper.
TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/cluster/lib.sh
. "$TOOLS_DIR/../cluster/lib.sh"
# shellcheck source=tests/tools/versions.env
. "$TOOLS_DIR/versions.env"
HELM_BIN="$CACHE_ROOT/helm-$HELM_VERSION/bin"
# Our own programs: keyed by the library version plus a hash of their sources (see build).
KSTATUS_DIR="$CACHE_ROOT/kstatus-cli-utils-$CLI_UTILS_VERSION"
DOCKERFILE_LINT_DIR="$CACHE_ROOT/dockerfile-lint-buildkit-$BUILDKIT_VERSION"
ARGOCD_LUA_DIR="$CACHE_ROOT/argocd-lua-gopher-lua-$GOPHER_LUA_VERSION"
# A released module, built as is (like Helm): keyed by its version alone.
REGISTRY_BIN="$CACHE_ROOT/registry-$DISTRIBUTION_VERSION/bin"
PROMETHEUS_BIN="$CACHE_ROOT/prometheus-$PROMETHEUS_VERSION/bin"

tools_log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
tools_die() { tools_log "ERROR: $*"; exit 1; }

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"

# take_lock NAME: serialises concurrent builds (two test binaries, CI retries) of one cache entry.
take_lock() {
  mkdir -p "$CACHE_ROOT"
  exec 8>"$CACHE_ROOT/.tools-$1.lock"
  if ! flock -n 8; then
    tools_log "another build holds $CACHE_ROOT/.tools-$1.lock; waiting for it"
    flock 8
  fi
}

# cached DEST BIN: true when DEST/BIN exists, is executable and DEST/.complete is stamped.
cached() { [ -f "$1/.complete" ] && [ -x "$1/$2" ]; }

# build_go_tool NAME DEST BIN COMMAND...: runs COMMAND with $OUT set to a temp dir (COMMAND must
# write $OUT/BIN), then stamps and moves it to DEST. Skipped when DEST is complete.
build_go_tool() {
  local name=$1 dest=$2 bin=$3; shift 3
  cached "$dest" "$bin" && return 0
  command -v go >/dev/null || tools_die "go is not installed (needed to build $name; Go >= 1.26)"
  take_lock "$name"
  cached "$dest" "$bin" && return 0
  tools_log "building $name into $dest (first run only)"
  local start=$SECONDS buildlog="$CACHE_ROOT/build-$name.log"
  OUT="$dest.tmp.$$"
  rm -rf "$OUT"; mkdir -p "$OUT"
  if ! ("$@") >"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    rm -rf "$OUT"
    tools_die "building $name failed (log above, full log: $buildlog)"
  fi
  [ -x "$OUT/$bin" ] || { rm -rf "$OUT"; tools_die "building $name did not produce $bin"; }
  echo "built in $((SECONDS - start))s by tests/tools on $(date -u +%FT%TZ) with $(go env GOVERSION)" >"$OUT/.complete"
  rm -rf "$dest"; mkdir -p "$(dirname "$dest")"; mv "$OUT" "$dest"
  tools_log "built $name in $((SECONDS - start))s: $dest/$bin"
}
