#!/usr/bin/env bash
# Run the whole test suite. Uses the local PostgreSQL and Redis when they answer (or whatever
# DATABASE_URL and CELERY_BROKER_URL say); without them the integration tests are skipped, unless
# ORCHESTRATOR_REQUIRE_SERVICES=1, where they fail.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

answers() { "$PY" - "$1" "$2" <<'PYEOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PYEOF
}

if [ -z "${DATABASE_URL:-}" ] && answers 127.0.0.1 5432; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/orchestrator"
fi
if [ -z "${CELERY_BROKER_URL:-}" ] && answers 127.0.0.1 6379; then
  export CELERY_BROKER_URL="redis://127.0.0.1:6379/0"
fi
echo "database: ${DATABASE_URL:-SQLite (integration tests skipped)}"
echo "broker:   ${CELERY_BROKER_URL:-none (integration tests skipped)}"

"$VENV/bin/ruff" check orchestrator tests bench demo || exit 1
"$PY" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
