#!/usr/bin/env bash
# The main job on the embedded default:
#  1. start `clearml-agent server` (the embedded ClearML-compatible API + files server) and print
#     how to point the SDK and agents at it;
#  2. create a sample task with the real clearml SDK, enqueue it, and run `clearml-agent daemon`
#     (this agent) until the task is done: venv from PyPI, the task's script, output shipped back;
#  3. run sample tasks through our journaled state machine (simulated effects), kill -9 one
#     mid-run, restart, and show the journal.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
B=$PWD/target/release/clearml-agent
DEMO=${DEMO_DIR:-$(mktemp -d)}
echo "== demo dir $DEMO"

echo "== 1. clearml-agent server --data-dir $DEMO/server"
"$B" server --data-dir "$DEMO/server" --port 0 --files-port 0 >"$DEMO/server.out" 2>"$DEMO/server.err" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
until [ -s "$DEMO/server/server.env" ] && grep -q "clearml.conf" "$DEMO/server.out" 2>/dev/null; do sleep 0.1; done
cat "$DEMO/server.out"
# shellcheck disable=SC1091
. "$DEMO/server/server.env"
export CLEARML_CONFIG_FILE=/nonexistent HOME="$DEMO/home" PYTHONUNBUFFERED=1
mkdir -p "$HOME"

echo "== 2. a sample task, created with the clearml SDK and executed by an agent"
VENV=$(scripts/python-venv.sh)
cat >"$DEMO/sample.py" <<'PY'
import platform, six
print("sample task running on", platform.node(), "with six", six.__version__)
PY
id=$("$VENV/bin/python" tests/python/sdk_flow.py "$DEMO/sample.py" demo "sample task" | tail -1 |
  "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "task $id created and enqueued on 'default'"
echo "== clearml-agent daemon --queue default (runs one task here, then exits)"
# The preemption watcher stays off: the demo sends traffic to loopback only.
CLEARML_AGENT_JOURNAL_DIR="$DEMO/agent-journal" CLEARML_AGENT__AGENT__RUNS_DIR="$DEMO/agent-runs" \
  CLEARML_AGENT__AGENT__VENVS_DIR="$DEMO/venvs" CLEARML_AGENT__AGENT__PREEMPTION__ENABLED=false \
  "$B" daemon --queue default --foreground --max-tasks 1 2>&1 | sed 's/^/  daemon | /'
status=$("$VENV/bin/python" tests/python/status.py "$id" 20 | tail -1 |
  "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["status"])')
echo "task $id: $status; its console output as the SDK reads it:"
"$VENV/bin/python" tests/python/status.py "$id" 20 | tail -1 |
  "$VENV/bin/python" -c 'import json,sys; [print("  |", l) for m in json.load(sys.stdin)["console"] for l in m.splitlines() if "sample task running" in l]'
"$B" journal inspect "$id" --journal-dir "$DEMO/agent-journal"

echo "== 3. the journaled state machine: sample runs, one killed with -9 and resumed"
J="$DEMO/journal"; E="$DEMO/effects"
"$B" simulate-run --journal-dir "$J" --effects-dir "$E" --task-id sample-task
"$B" simulate-run --journal-dir "$J" --effects-dir "$E" --task-id failing-task --exit-code 3
CLEARML_AGENT_FAILPOINTS=after-seq:6 "$B" simulate-run --journal-dir "$J" --effects-dir "$E" \
  --task-id crashed-task 2>"$DEMO/err" &
pid=$!
until grep -q FAILPOINT "$DEMO/err" 2>/dev/null; do sleep 0.05; done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
"$B" simulate-run --journal-dir "$J" --effects-dir "$E"
echo "== clearml-agent journal inspect"
"$B" journal inspect --journal-dir "$J"
echo "== clearml-agent journal inspect crashed-task"
"$B" journal inspect crashed-task --journal-dir "$J"
echo "== clearml-agent journal verify"
"$B" journal verify --journal-dir "$J"
[ "$status" = completed ]
