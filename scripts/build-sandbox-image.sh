#!/usr/bin/env bash
# Idempotent: make sure a Docker engine answers and the configured sandbox image exists.
# Builds it from Debian packages (debootstrap, about two minutes) only when it is missing;
# pass --force to rebuild. Uses the project's settings (ASSISTANT_SANDBOX_IMAGE, ...).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
"$root/scripts/ensure-docker.sh"
cd "$root"
exec "$python" -m assistant.cli sandbox build "$@"
