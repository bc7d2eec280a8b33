#!/usr/bin/env bash
# Creates (or reuses) the Python venv that the end-to-end tests use as outside clients: the real
# clearml SDK and the real Python clearml-agent, pinned. Prints the venv's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CLEARML_TEST_VENV:-$PWD/target/pyvenv}"
PINS="clearml==2.1.12 clearml-agent==3.0.3"
STAMP="$VENV/.pins"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
  echo "$VENV"; exit 0
fi
PY="$(command -v python3.11 || command -v python3)"
"$PY" -m venv --clear "$VENV" >&2
"$VENV/bin/pip" install -q --disable-pip-version-check $PINS >&2
echo "$PINS" > "$STAMP"
echo "$VENV"
