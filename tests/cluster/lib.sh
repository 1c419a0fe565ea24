# shellcheck shell=bash disable=SC2034  # sourced: its variables are used by the scripts that source it
# Shared by tests/cluster/{build,up,down}. Sourced, not run.
HARNESS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HARNESS_DIR/../.." && pwd)"
# shellcheck source=tests/cluster/versions.env
. "$HARNESS_DIR/versions.env"
CACHE_ROOT="${PBC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prediction-batch-controller}"
K8S_BIN="$CACHE_ROOT/k8s-$K8S_VERSION/bin"
ETCD_BIN="$CACHE_ROOT/etcd-$ETCD_VERSION/bin"
KWOK_BIN="$CACHE_ROOT/kwok-$KWOK_VERSION/bin"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
