#!/usr/bin/env bash
# Regenerates the replay fixtures from journals written by the real binary. Run after an intended
# change of the FSM or the record format, and review the diff: a fixture that changes is a
# behaviour change.
#  - tests/replay/fixtures/v2/*.json: protocol-2 runs with simulated effects (every outcome);
#  - tests/replay/fixtures/real/*.json: runs of the real daemon (embedded server, git, venv,
#    processes), recorded by the ignored test `record_real_handler_fixtures` in tests/crash.rs;
#  - tests/replay/fixtures/*.json are first-schema journals, recorded before protocol 2: they are
#    never regenerated, so that old journals keep replaying.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
B=target/debug/clearml-agent
OUT=tests/replay/fixtures/v2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"

gen() {
  local name=$1; shift
  "$B" simulate-run --journal-dir "$tmp/$name/j" --effects-dir "$tmp/$name/e" --task-id "$name" "$@" >/dev/null
  "$B" journal export --journal-dir "$tmp/$name/j" "$name.1" -o "$OUT/$name.json"
}

# kill -9 the agent after record $2, restart it, export the resumed run.
crash_resume() {
  local name=$1 seq=$2; shift 2
  local d="$tmp/$name"
  mkdir -p "$d"
  CLEARML_AGENT_FAILPOINTS="after-seq:$seq" "$B" simulate-run --journal-dir "$d/j" --effects-dir "$d/e" \
    --task-id "$name" "$@" >/dev/null 2>"$d/err" &
  local pid=$!
  until grep -q FAILPOINT "$d/err" 2>/dev/null; do sleep 0.05; done
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  "$B" simulate-run --journal-dir "$d/j" --effects-dir "$d/e" "$@" >/dev/null
  "$B" journal export --journal-dir "$d/j" "$name.1" -o "$OUT/$name.json"
}

gen happy
gen fail-resolve-env --fail-at resolve-env
gen fail-clone --fail-at clone
gen fail-apply-patch --fail-at apply-patch
gen fail-launch --fail-at launch
gen exit-code-3 --exit-code 3
gen abort-before-clone --abort-before clone
gen abort-while-running --abort-before wait
gen requeue-while-running --requeue-before wait
gen report-retried --report-failures 2
crash_resume resume-after-intent 4
crash_resume resume-while-running 10
CLEARML_TEST_VENV="$(scripts/python-venv.sh)" cargo test --quiet --test crash record_real_handler_fixtures -- --ignored
echo "fixtures written to $OUT and tests/replay/fixtures/real"
