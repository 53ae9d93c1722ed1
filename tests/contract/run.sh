#!/usr/bin/env bash
# The API contract, checked by fuzzing: `seedvr-local serve --model tiny` (the real pipeline with random
# weights), and schemathesis against its /openapi.json with every check, stateful links included
# (submit -> status/result/cancel).
# Zero failures, zero server errors in the server's log. Bounded: MAX_EXAMPLES cases per operation,
# deterministic data, and a hard wall-clock limit (CONTRACT_TIME_LIMIT_S, default 240 s).
#
#   tests/contract/run.sh                 # from the repository root, with .venv installed (.[test])
#   MAX_EXAMPLES=1000 CONTRACT_TIME_LIMIT_S=1200 tests/contract/run.sh   # longer, on demand
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
MAX_EXAMPLES=${MAX_EXAMPLES:-200}
LIMIT_S=${CONTRACT_TIME_LIMIT_S:-240}

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
"$PYTHON" -m seedvr_local.cli serve --model tiny --device cpu --port "$port" \
  --data-dir "$work/data" >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 120); do
  if "$PYTHON" -c "import httpx, sys; sys.exit(httpx.get('$base/readyz').status_code != 200)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$work/server.log" >&2
    echo "contract: the server did not start" >&2
    exit 1
  fi
  sleep 0.5
done

set +e
timeout --signal=INT --kill-after=10 "$LIMIT_S" \
  "$(dirname "$PYTHON")/schemathesis" --no-color --config-file tests/contract/schemathesis.toml \
  run "$base/openapi.json" --checks all --max-examples "$MAX_EXAMPLES" \
  --report junit --report-dir "${CONTRACT_REPORT_DIR:-$work/report}"
rc=$?
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then
  echo "contract: schemathesis ran past ${LIMIT_S} s" >&2
fi

# A 500 is also a failure when no check saw it (the crash guard logs every unexpected exception).
if grep -q -E "Traceback|unexpected error" "$work/server.log"; then
  grep -B2 -A30 -E "Traceback|unexpected error" "$work/server.log" | head -80 >&2
  echo "contract: the server logged an unexpected error" >&2
  rc=1
fi
exit "$rc"
