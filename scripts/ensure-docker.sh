#!/usr/bin/env bash
# Idempotent: make sure a Docker engine answers on this machine.
#
#   scripts/ensure-docker.sh          the default engine (unix:///var/run/docker.sock)
#   scripts/ensure-docker.sh NAME     an extra engine beside it: socket /run/assistant-engines/NAME.sock, its own
#                                     data root, exec root, pid file and bridge br-NAME (never --bridge=none,
#                                     which deletes the default engine's docker0); no iptables, no masquerading
#   ENGINE_TLS_DIR=DIR ENGINE_TCP=127.0.0.1:2376 scripts/ensure-docker.sh NAME
#                                     the same engine also listening on TCP with TLS that verifies clients
#                                     (DIR holds ca.pem, server-cert.pem, server-key.pem)
#
# Installs Debian's docker.io when dockerd is missing, starts dockerd when it does not answer, waits up to
# 30 s. A dead daemon (a zombie no one reaped, or a stale pid file) counts as not running. Exits non-zero
# with a message saying what to do otherwise.
set -u

NAME="${1:-}"
log() { printf 'ensure-docker%s: %s\n' "${NAME:+ ($NAME)}" "$*" >&2; }

if [ -z "$NAME" ]; then
    HOST="unix:///var/run/docker.sock"
    PIDFILE="/var/run/docker.pid"
    EXEC_ROOT="/var/run/docker"
    LOG="/var/log/dockerd.log"
    ARGS=()
else
    case "$NAME" in *[!a-z0-9-]*|"") log "an engine name is lower-case letters, digits and dashes"; exit 2 ;; esac
    RUN="/run/assistant-engines"
    HOST="unix://$RUN/$NAME.sock"
    PIDFILE="$RUN/$NAME.pid"
    EXEC_ROOT="$RUN/$NAME-exec"
    LOG="/var/log/dockerd-$NAME.log"
    BRIDGE="br-${NAME:0:12}"
    ARGS=(--host "$HOST" --data-root "/var/lib/assistant-engines/$NAME" --exec-root "$EXEC_ROOT"
          --pidfile "$PIDFILE" --bridge "$BRIDGE" --iptables=false --ip-masq=false)
    if [ -n "${ENGINE_TCP:-}" ]; then
        ARGS+=(--host "tcp://$ENGINE_TCP" --tlsverify --tlscacert "$ENGINE_TLS_DIR/ca.pem"
               --tlscert "$ENGINE_TLS_DIR/server-cert.pem" --tlskey "$ENGINE_TLS_DIR/server-key.pem")
    fi
fi

engine_answers() { docker -H "$HOST" info >/dev/null 2>&1; }

# The process a pid file names is alive: it exists and is not a zombie.
pid_alive() {
    local pid state
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] || return 1
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    case "$state" in Z*|"") return 1 ;; esac
    return 0
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        log "docker is not installed and installing it needs root: run 'sudo apt-get install -y docker.io'"
        exit 1
    fi
    log "installing docker.io with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; } >/var/log/ensure-docker-apt.log 2>&1; then
        log "apt-get install docker.io failed; see /var/log/ensure-docker-apt.log"
        exit 1
    fi
fi

if engine_answers; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "the docker engine is not answering and starting dockerd needs root: run 'sudo dockerd &' or 'sudo systemctl start docker'"
    exit 1
fi

if pid_alive "$PIDFILE"; then
    log "dockerd (pid $(cat "$PIDFILE")) is running but does not answer yet; waiting"
else
    # A killed daemon leaves its pid file (and, unreaped, a zombie that still matches pgrep): dockerd would
    # refuse to start over it. Its containerd dies with it, likewise unreaped, and the new dockerd would wait
    # for that "still running" containerd until it times out.
    rm -f "$PIDFILE"
    # The killed daemon's containerd may be on its way out (its socket already gone): a new dockerd that finds it
    # "still running" waits for it instead of starting its own, and gives up after 30 s. Let it go first (up to
    # 10 s); a containerd that still serves its socket is reused by the new dockerd as it is.
    CONTAINERD_DIR="$EXEC_ROOT/containerd"
    for _ in $(seq 1 50); do
        old=$(cat "$CONTAINERD_DIR/containerd.pid" 2>/dev/null) || break
        state=$(ps -o stat= -p "$old" 2>/dev/null) || { rm -f "$CONTAINERD_DIR/containerd.pid"; break; }
        case "$state" in Z*) rm -f "$CONTAINERD_DIR/containerd.pid"; break ;; esac
        [ -S "$CONTAINERD_DIR/containerd.sock" ] && break
        sleep 0.2
    done
    if [ -n "$NAME" ]; then
        mkdir -p "$RUN" "/var/lib/assistant-engines/$NAME"
        if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
            ip link add "$BRIDGE" type bridge && ip link set "$BRIDGE" up || { log "could not create bridge $BRIDGE"; exit 1; }
        fi
    fi
    log "starting dockerd (log: $LOG)"
    # setsid: the engine must outlive the shell, test run or process group that happened to start it
    setsid nohup dockerd "${ARGS[@]}" >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 60); do
    if engine_answers; then
        log "docker engine is ready"
        exit 0
    fi
    sleep 0.5
done

log "dockerd did not answer within 30 s; the last lines of $LOG:"
tail -n 15 "$LOG" >&2 2>/dev/null || true
exit 1
