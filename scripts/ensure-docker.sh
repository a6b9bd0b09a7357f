#!/usr/bin/env bash
# Idempotent: make sure a Docker engine answers on this machine.
# Installs Debian's docker.io when dockerd is missing, starts dockerd when it does not
# answer, waits up to 30 s. Exits non-zero with a message saying what to do otherwise.
set -u

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

engine_answers() { docker info >/dev/null 2>&1; }

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

if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    # setsid: the engine must outlive the shell, test run or process group that happened to start it
    setsid nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
fi

for _ in $(seq 1 60); do
    if engine_answers; then
        log "docker engine is ready"
        exit 0
    fi
    sleep 0.5
done

log "dockerd did not answer within 30 s; the last lines of /var/log/dockerd.log:"
tail -n 15 /var/log/dockerd.log >&2 2>/dev/null || true
exit 1
