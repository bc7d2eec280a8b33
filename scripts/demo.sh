#!/usr/bin/env bash
# The main job on the embedded default: run sample tasks through the journaled state
# machine, then show the journal. Until the embedded server and the real git/venv/process
# effects land, the effects are the simulated ones (they record every call); a kill -9
# mid-run shows the resume.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
B=target/release/clearml-agent
DEMO=${DEMO_DIR:-$(mktemp -d)}
J="$DEMO/journal"; E="$DEMO/effects"
echo "== journal in $J"
"$B" simulate-run --journal-dir "$J" --effects-dir "$E" --task-id sample-task
"$B" simulate-run --journal-dir "$J" --effects-dir "$E" --task-id failing-task --exit-code 3
echo "== kill -9 the agent after journal record 6 of crashed-task, then restart it"
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
