#!/usr/bin/env bash
# Set up everything this machine needs (idempotent) and start the web app on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh run
exec .venv/bin/assistant serve "$@"
