#!/usr/bin/env bash
# The test command (README, .ci/run): installs the pinned outside clients the end-to-end tests
# drive (the Python clearml SDK and clearml-agent, in target/pyvenv), then runs every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."
CLEARML_TEST_VENV="$(scripts/python-venv.sh)"
export CLEARML_TEST_VENV
exec cargo test --locked "$@"
