#!/usr/bin/env bash
# Set up everything the tests need (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh test
if [ -f .venv/.postgres-url ]; then
    ASSISTANT_TEST_POSTGRES_URL="$(cat .venv/.postgres-url)"
    export ASSISTANT_TEST_POSTGRES_URL
fi
# The tests talk to loopback servers only; keep any proxy out of their way.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
exec .venv/bin/python -m pytest -q -ra "$@"
