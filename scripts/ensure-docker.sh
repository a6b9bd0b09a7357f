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
#
# Per-job disk caps: every engine this script starts keeps its data root (images and containers) on its own
# btrfs file system with quotas on (simple quotas on kernels 6.7 and later: scripts/btrfs-quota.py), in a sparse
# image file mounted through a loop device, and runs the btrfs storage driver. That lets each container be created with storage_opt size=…, which the kernel enforces (a
# btrfs qgroup) for everything the container writes, and it bounds the whole engine by the image's size.
# (overlay2's size option needs XFS project quotas, which this kind of kernel may lack: CONFIG_XFS_QUOTA.)
#   default engine: /var/lib/assistant-docker.img mounted at /var/lib/assistant-docker (the data root)
#   extra engine:   /var/lib/assistant-engines/NAME.img mounted at /var/lib/assistant-engines/NAME.root
# The image is made once, sparse, sized from the free space then (3/4 of it for the default engine, 1/4 for an
# extra one; ENGINE_DISK_SIZE=40G says otherwise); it is mounted again when it exists but is not mounted (after
# a reboot). ENGINE_DISK_QUOTA=0 keeps the plain data root (no caps). An engine that already answers is left
# as it is, with a warning when it cannot cap disks.
set -u

NAME="${1:-}"
SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
log() { printf 'ensure-docker%s: %s\n' "${NAME:+ ($NAME)}" "$*" >&2; }

if [ -z "$NAME" ]; then
    HOST="unix:///var/run/docker.sock"
    PIDFILE="/var/run/docker.pid"
    EXEC_ROOT="/var/run/docker"
    LOG="/var/log/dockerd.log"
    DISK_IMAGE="/var/lib/assistant-docker.img"
    DATA_ROOT="/var/lib/assistant-docker"
    DISK_SHARE=3   # quarters of the free space
    ARGS=()
else
    case "$NAME" in *[!a-z0-9-]*|"") log "an engine name is lower-case letters, digits and dashes"; exit 2 ;; esac
    RUN="/run/assistant-engines"
    HOST="unix://$RUN/$NAME.sock"
    PIDFILE="$RUN/$NAME.pid"
    EXEC_ROOT="$RUN/$NAME-exec"
    LOG="/var/log/dockerd-$NAME.log"
    BRIDGE="br-${NAME:0:12}"
    DISK_IMAGE="/var/lib/assistant-engines/$NAME.img"
    DATA_ROOT="/var/lib/assistant-engines/$NAME.root"
    DISK_SHARE=1
    ARGS=(--host "$HOST" --exec-root "$EXEC_ROOT"
          --pidfile "$PIDFILE" --bridge "$BRIDGE" --iptables=false --ip-masq=false)
    if [ -n "${ENGINE_TCP:-}" ]; then
        ARGS+=(--host "tcp://$ENGINE_TCP" --tlsverify --tlscacert "$ENGINE_TLS_DIR/ca.pem"
               --tlscert "$ENGINE_TLS_DIR/server-cert.pem" --tlskey "$ENGINE_TLS_DIR/server-key.pem")
    fi
fi

engine_answers() { docker -H "$HOST" info >/dev/null 2>&1; }
QUOTA="${ENGINE_DISK_QUOTA:-1}"

# The process a pid file names is alive: it exists and is not a zombie.
pid_alive() {
    local pid state
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] || return 1
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    case "$state" in Z*|"") return 1 ;; esac
    return 0
}

wanted=()
command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || wanted+=(docker.io)
[ "$QUOTA" = 0 ] || command -v mkfs.btrfs >/dev/null 2>&1 || wanted+=(btrfs-progs)
if [ "${#wanted[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "${wanted[*]} not installed and installing needs root: run 'sudo apt-get install -y ${wanted[*]}'"
        exit 1
    fi
    log "installing ${wanted[*]} with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}"; } >/var/log/ensure-docker-apt.log 2>&1; then
        log "apt-get install ${wanted[*]} failed; see /var/log/ensure-docker-apt.log"
        exit 1
    fi
fi

if engine_answers; then
    driver=$(docker -H "$HOST" info --format '{{.Driver}} {{.DockerRootDir}}' 2>/dev/null)
    if [ "$QUOTA" != 0 ] && [ "${driver%% *}" != btrfs ]; then
        # Restarting an engine stops every container on it (other people's too): only say what to do.
        then_image="./run.sh or ./test.sh build the sandbox image on the new data root"
        [ -n "$NAME" ] && then_image="assistant sandbox push $NAME copies the sandbox image there"
        log "the running engine stores containers with ${driver%% *} in ${driver#* }, so per-job disk caps are not" \
            "enforced on it (it was started before this script moved engines onto a btrfs data root). To move it:" \
            "stop it (kill \$(cat $PIDFILE)) and run this script again; then $then_image."
    fi
    exit 0
fi

# The engine's data root: a btrfs file system with quotas on, in a sparse image file on a loop device (see the top).
# Idempotent: made once, mounted when not mounted, quotas turned on when off. Prints nothing on success.
data_root_ready() {
    local fstype size free loopdev
    mkdir -p "$DATA_ROOT" "$(dirname "$DISK_IMAGE")" || return 1
    fstype=$(findmnt -n -o FSTYPE --mountpoint "$DATA_ROOT" 2>/dev/null | head -n1)
    if [ -n "$fstype" ] && [ "$fstype" != btrfs ]; then
        log "$DATA_ROOT is mounted, but as $fstype, not the btrfs image $DISK_IMAGE; unmount it and run this again"
        return 1
    fi
    if [ -z "$fstype" ]; then
        if [ ! -f "$DISK_IMAGE" ]; then
            if [ -n "${ENGINE_DISK_SIZE:-}" ]; then
                size="$ENGINE_DISK_SIZE"
            else
                free=$(df --output=avail -B1 "$(dirname "$DISK_IMAGE")" | tail -n1 | tr -d ' ')
                size=$(( free / 4 * DISK_SHARE / 1073741824 ))G
                if [ "${size%G}" -lt 4 ]; then
                    log "only $(( free / 1073741824 )) GiB free beside $DISK_IMAGE: too little for the engine's data" \
                        "(at least 4 GiB); free some disk or set ENGINE_DISK_SIZE (e.g. 8G)"
                    return 1
                fi
            fi
            log "making the engine's data file system: $DISK_IMAGE ($size, sparse: it takes disk only as used)"
            truncate -s "$size" "$DISK_IMAGE.new" && mkfs.btrfs -q "$DISK_IMAGE.new" >/dev/null \
                && mv "$DISK_IMAGE.new" "$DISK_IMAGE" || { rm -f "$DISK_IMAGE.new"; log "could not make $DISK_IMAGE"; return 1; }
        fi
        # A loop device still holding the image but mounted nowhere (a mount that failed half-way) is let go.
        for loopdev in $(losetup -n -O NAME -j "$DISK_IMAGE" 2>/dev/null); do
            findmnt -n "$loopdev" >/dev/null 2>&1 || losetup -d "$loopdev" 2>/dev/null
        done
        if ! mount -o loop "$DISK_IMAGE" "$DATA_ROOT"; then
            log "could not mount $DISK_IMAGE at $DATA_ROOT (does the kernel have btrfs and loop devices?)"
            return 1
        fi
    fi
    # Quotas on before the engine writes anything: simple quotas where the kernel has them (no back-reference
    # walks, which made a busy engine's every container create take a minute), else full qgroups.
    local before
    before=$(python3 "$SCRIPT_DIR/btrfs-quota.py" mode "$DATA_ROOT") || before=off
    QUOTA_MODE=$(python3 "$SCRIPT_DIR/btrfs-quota.py" enable "$DATA_ROOT") \
        || { log "could not turn on btrfs quotas on $DATA_ROOT"; return 1; }
    if [ "$before" = off ] && [ "$QUOTA_MODE" = full ] && ! btrfs quota rescan -w "$DATA_ROOT" >/dev/null 2>&1; then
        log "could not count the existing data of $DATA_ROOT (btrfs quota rescan)"; return 1
    fi
}

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
    if [ "$QUOTA" != 0 ] && data_root_ready; then
        # The label tells the app how the engine counts a container's disk: simple quotas count what it writes,
        # full qgroups its image too (the app adds the image's size to the cap there).
        ARGS+=(--data-root "$DATA_ROOT" --storage-driver btrfs --label "assistant.disk-quota=$QUOTA_MODE")
    elif [ "$QUOTA" != 0 ]; then
        # Better an engine without disk caps than none: the app sees it and says "disk not capped" (or refuses).
        log "WARNING: starting the engine without per-job disk caps (see above); ENGINE_DISK_QUOTA=0 silences this"
        [ -n "$NAME" ] && ARGS+=(--data-root "/var/lib/assistant-engines/$NAME")
    else
        [ -n "$NAME" ] && ARGS+=(--data-root "/var/lib/assistant-engines/$NAME")
    fi
    if [ -n "$NAME" ]; then
        mkdir -p "$RUN"
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
