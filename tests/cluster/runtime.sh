# shellcheck shell=bash
# Process management shared by tests/cluster/{up,down,restart}. Sourced after lib.sh, not run.
#
# Layout of a cluster directory ($CLUSTER_DIR, default $REPO_ROOT/target/test-cluster):
#   cmd/<component>    the component's command line, one shell-quoted word per line (restart reuses it)
#   pids/<component>   the PID `up`/`restart` started it as (down/restart stop exactly that process)
#   logs/<component>.log, logs/audit.log
#   pki/, *.kubeconfig, kubeconfig (admin), controller.kubeconfig (user pbc-controller), env, ports

CLUSTER_DIR="${CLUSTER_DIR:-$REPO_ROOT/target/test-cluster}"
# Absolute, so the env file, kubeconfigs and PID records stay valid from any working directory.
case "$CLUSTER_DIR" in /*) ;; *) CLUSTER_DIR="$PWD/$CLUSTER_DIR" ;; esac
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
CLUSTER_MARKER=.pbc-test-cluster

# up and down delete $CLUSTER_DIR: only when it is one of ours (or empty), never e.g. a mistyped
# CLUSTER_DIR=$HOME.
ensure_cluster_dir_is_ours() {
  [ -f "$CLUSTER_DIR/$CLUSTER_MARKER" ] && return 0
  [ -z "$(ls -A "$CLUSTER_DIR" 2>/dev/null)" ] && return 0
  die "$CLUSTER_DIR exists but was not created by tests/cluster/up (no $CLUSTER_MARKER); not touching it"
}

# The process recorded for a component, if it is still that process (guards against PID reuse:
# the recorded command's binary must be what /proc says the PID runs).
component_pid() {
  local name=$1 pidfile="$CLUSTER_DIR/pids/$1" pid bin
  [ -s "$pidfile" ] || return 1
  pid=$(<"$pidfile")
  [ -d "/proc/$pid" ] || return 1
  bin=$(component_binary "$name") || return 1
  pid_runs "$pid" "$bin" || return 1
  echo "$pid"
}

# pid_runs PID BINARY: PID is alive (not a zombie) and executes BINARY (also when BINARY was
# replaced on disk since, which /proc shows as "... (deleted)").
pid_runs() {
  local exe
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ] || return 1
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  [ "${exe% (deleted)}" = "$(readlink -f "$2")" ]
}

# The executable of a component's recorded command line (skipping an `env VAR=...` prefix).
component_binary() {
  local word
  [ -s "$CLUSTER_DIR/cmd/$1" ] || return 1
  while IFS= read -r word; do
    case "$word" in env | *=*) continue ;; esac
    echo "$word"; return 0
  done <"$CLUSTER_DIR/cmd/$1"
  return 1
}

# save_command NAME WORD...: records the command line, one word per line (binaries and paths here
# never contain newlines), so restart can start it again with identical flags and ports.
save_command() {
  local name=$1; shift
  mkdir -p "$CLUSTER_DIR/cmd"
  printf '%s\n' "$@" >"$CLUSTER_DIR/cmd/$name"
}

# start_component NAME: starts the recorded command in its own session (so a Ctrl-C in the shell
# that ran `up`, or the end of that shell, does not reach it), appending to logs/NAME.log.
start_component() {
  local name=$1 words=()
  mapfile -t words <"$CLUSTER_DIR/cmd/$name"
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/pids"
  printf '\n===== %s starting %s\n' "$(date -u +%FT%T.%3NZ)" "$name" >>"$CLUSTER_DIR/logs/$name.log"
  # setsid execs the command in place (the background subshell is not a group leader), so $! is
  # the component's own PID.
  setsid "${words[@]}" >>"$CLUSTER_DIR/logs/$name.log" 2>&1 </dev/null &
  local pid=$! bin i
  echo "$pid" >"$CLUSTER_DIR/pids/$name"
  # Wait for the exec to happen, so that component_pid (and thus down) recognises the process from
  # the first moment on.
  bin=$(component_binary "$name")
  for ((i = 0; i < 100; i++)); do
    pid_runs "$pid" "$bin" && return 0
    [ -d "/proc/$pid" ] || break
    sleep 0.02
  done
  pid_runs "$pid" "$bin" || { component_log_tail "$name"; die "$name did not start ($bin)"; }
}

# stop_component NAME [GRACE_SECONDS]: TERM, then KILL after the grace period. Only ever signals
# the recorded PID, and only while it still runs the recorded binary.
stop_component() {
  local name=$1 grace=${2:-10} pid i
  if pid=$(component_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      [ -d "/proc/$pid" ] || break
      # A zombie (exited, not yet reaped by our shell) counts as stopped.
      [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
      log "$name (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    fi
  fi
  rm -f "$CLUSTER_DIR/pids/$name"
}

# Stops every component, the dependants first, etcd last.
stop_all() {
  local i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[$i]}" "$@"; done
}

any_component_running() {
  local c
  for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null && return 0; done
  return 1
}

component_log_tail() {
  local f="$CLUSTER_DIR/logs/$1.log"
  printf '\n----- last 40 lines of %s -----\n' "$f" >&2
  if [ -f "$f" ]; then tail -n 40 "$f" >&2; else echo "(no log)" >&2; fi
  printf -- '----- end of %s -----\n' "$f" >&2
}

# wait_for NAME TIMEOUT_S CHECK...: polls CHECK (a command) until it succeeds. Fails fast, with the
# component's log tail, when the component's process has exited.
wait_for() {
  local name=$1 timeout=$2 deadline; shift 2
  deadline=$(($(date +%s%N) / 1000000 + timeout * 1000))
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [ -s "$CLUSTER_DIR/pids/$name" ] && ! component_pid "$name" >/dev/null; then
      component_log_tail "$name"
      log "ERROR: $name exited while starting (full log: $CLUSTER_DIR/logs/$name.log)"
      return 1
    fi
    if (($(date +%s%N) / 1000000 > deadline)); then
      component_log_tail "$name"
      log "ERROR: $name not ready after ${timeout}s (full log: $CLUSTER_DIR/logs/$name.log)"
      return 1
    fi
    sleep 0.1
  done
}

# Readiness checks, one per component; ports come from $CLUSTER_DIR/ports.
load_ports() {
  # shellcheck source=/dev/null
  . "$CLUSTER_DIR/ports"
}
etcd_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
apiserver_get() {
  curl -fsS --max-time 5 --cacert "$CLUSTER_DIR/pki/ca.crt" --cert "$CLUSTER_DIR/pki/admin.crt" \
    --key "$CLUSTER_DIR/pki/admin.key" "https://127.0.0.1:$APISERVER_PORT$1"
}
apiserver_ready() { [ "$(apiserver_get /readyz)" = ok ]; }
# The controller manager and the scheduler serve /healthz on their secure port with a self-signed
# certificate; /healthz is always allowed without credentials.
secure_healthz() { [ "$(curl -fsSk --max-time 2 "https://127.0.0.1:$1/healthz")" = ok ]; }
kcm_ready() { secure_healthz "$KCM_PORT"; }
scheduler_ready() { secure_healthz "$SCHEDULER_PORT"; }
