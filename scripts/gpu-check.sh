#!/usr/bin/env bash
# GPU host check (issue 12), for a machine with NVIDIA GPUs; its output goes to BENCHMARKS.md.
#  1. NVML discovery and stats against nvidia-smi, the driver's CUDA version, and the CUDA devices
#     a task really sees (libcuda, by UUID) for --gpus all / 0 / 1,0 / --cpu-only / a dynamic
#     grant: tests/gpu_nvml.rs, run with --ignored.
#  2. Two daemons side by side on the embedded server, --gpus 0 and --gpus 1 (--cpu-only for the
#     second on a one-GPU machine), one task each: every task reports the devices libcuda shows
#     it, and must see only its own. Needs `daemon --gpus` (issue 12 phase B): until then this
#     part says so and is skipped.
# Where there is no NVIDIA GPU it exits 2 with a message. Nothing here needs the network: tasks
# have no packages and the agent uses pip's bundled venv.
#
# Without cargo on the GPU machine, build here and point at the binaries:
#   cargo test --release --test gpu_nvml --no-run   (prints the test binary's path)
#   GPU_CHECK_TEST_BIN=<that path> GPU_CHECK_AGENT_BIN=target/release/clearml-agent scripts/gpu-check.sh
# GPU_CHECK_PLUMBING=1 runs part 2 on any machine with two plain daemons (no GPU, no --gpus), to
# check this harness itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PLUMBING=${GPU_CHECK_PLUMBING:-0}
NGPU=0

if [ "$PLUMBING" != 1 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi not found): nothing to check" >&2
    exit 2
  fi
  if ! LIST=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$LIST"; then
    echo "gpu-check: nvidia-smi lists no GPU (${LIST:-no output}): nothing to check" >&2
    exit 2
  fi
  NGPU=$(grep -c '^GPU ' <<<"$LIST")
  echo "== $(hostname): $NGPU GPU(s), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "$LIST"
  nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total,memory.used,temperature.gpu,utilization.gpu --format=csv
  echo "== 1. NVML against nvidia-smi; the CUDA devices a task sees per selection"
  if [ -n "${GPU_CHECK_TEST_BIN:-}" ]; then
    "$GPU_CHECK_TEST_BIN" --ignored --nocapture --test-threads=1
  else
    cargo test --test gpu_nvml -- --ignored --nocapture --test-threads=1
  fi
fi

echo "== 2. two daemons side by side, one task each"
B=${GPU_CHECK_AGENT_BIN:-}
if [ -z "$B" ]; then
  cargo build --quiet
  B=$PWD/target/debug/clearml-agent
fi
if [ "$PLUMBING" != 1 ] && ! "$B" daemon --help 2>/dev/null | grep -q -- '--gpus'; then
  echo "SKIP: this build's daemon has no --gpus yet (issue 12 phase B); part 1 is the GPU check for now"
  exit 0
fi

W=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${GPU_CHECK_KEEP:-0}" = 1 ]; then echo "(kept $W)"; else rm -rf "$W"; fi
}
trap cleanup EXIT
"$B" server --data-dir "$W/server" --port 0 --files-port 0 >"$W/server.out" 2>"$W/server.err" &
pids+=($!)
for _ in $(seq 300); do [ -s "$W/server/server.env" ] && break; sleep 0.1; done
# shellcheck disable=SC1091
. "$W/server/server.env"
export CLEARML_CONFIG_FILE=/nonexistent PYTHONUNBUFFERED=1

if [ "$PLUMBING" = 1 ]; then
  A_FLAGS=(); B_FLAGS=(); A_WANT=any; B_WANT=any
elif [ "$NGPU" -ge 2 ]; then
  A_FLAGS=(--gpus 0); B_FLAGS=(--gpus 1); A_WANT=0; B_WANT=1
else
  A_FLAGS=(--gpus 0); B_FLAGS=(--cpu-only); A_WANT=0; B_WANT=none
fi

# The API from Python's standard library (no SDK, no network): queues, tasks, logs.
api() {
  python3 - "$@" <<'PY'
import base64, json, os, sys, urllib.error, urllib.request
host = os.environ["CLEARML_API_HOST"].rstrip("/")
auth = base64.b64encode(("%s:%s" % (os.environ["CLEARML_API_ACCESS_KEY"], os.environ["CLEARML_API_SECRET_KEY"])).encode()).decode()
def call(endpoint, body):
    req = urllib.request.Request("%s/%s" % (host, endpoint), data=json.dumps(body).encode(),
                                 headers={"Authorization": "Basic " + auth, "Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["data"]
    except urllib.error.HTTPError as e:
        sys.exit("%s: HTTP %s %s" % (endpoint, e.code, e.read().decode(errors="replace")[:500]))
# What the task prints: its visibility variables and the devices libcuda shows it.
PROBE = r'''
import ctypes, json, os
info = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
try:
    cuda = ctypes.CDLL("libcuda.so.1")
    r = cuda.cuInit(0)
    devices = []
    if r == 0:
        n = ctypes.c_int(); cuda.cuDeviceGetCount(ctypes.byref(n))
        for i in range(n.value):
            d = ctypes.c_int(); cuda.cuDeviceGet(ctypes.byref(d), i)
            u = (ctypes.c_ubyte * 16)(); cuda.cuDeviceGetUuid(u, d); h = bytes(u).hex()
            devices.append("GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
    info["cuInit"], info["devices"] = r, devices
except OSError as e:
    info["cuInit"], info["devices"] = "no libcuda: %s" % e, []
print("GPUCHECK " + json.dumps(info, sort_keys=True))
'''
cmd = sys.argv[1]
if cmd == "create":
    name = sys.argv[2]
    queue = call("queues.create", {"name": name})["id"]
    task = call("tasks.create", {"name": name, "type": "training",
                                 "script": {"diff": PROBE, "entry_point": "probe.py", "binary": "python3"}})["id"]
    call("tasks.enqueue", {"task": task, "queue": queue})
    print(task)
elif cmd == "check":
    task, want, uuids = sys.argv[2], sys.argv[3], sys.argv[4].split(",") if sys.argv[4] else []
    status = call("tasks.get_by_id", {"task": task})["task"]["status"]
    log = "".join(e.get("msg", "") for e in call("events.get_task_log", {"task": task, "batch_size": 100000, "navigate_earlier": False})["events"])
    lines = [l for l in log.splitlines() if l.startswith("GPUCHECK ")]
    print("task %s: %s; %s" % (task, status, lines[-1] if lines else "no GPUCHECK line"))
    if status != "completed" or not lines:
        print(log[-3000:]); sys.exit(1)
    info = json.loads(lines[-1][len("GPUCHECK "):])
    if want == "any":
        sys.exit(0)
    expected = [] if want == "none" else [uuids[int(want)]]
    ok = info["devices"] == expected and info["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    print("  expected %s: %s" % (expected, "OK" if ok else "MISMATCH"))
    sys.exit(0 if ok else 1)
PY
}

UUIDS=""
if [ "$PLUMBING" != 1 ]; then
  UUIDS=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | paste -sd, -)
fi
TA=$(api create gpu-check-a)
TB=$(api create gpu-check-b)

start_daemon() { # name queue flags...
  local name=$1 queue=$2; shift 2
  local extra=()
  [ "$PLUMBING" = 1 ] && extra=(env "CLEARML_WORKER_ID=gpu-check-$name:0")
  mkdir -p "$W/$name/home"
  HOME="$W/$name/home" CLEARML_AGENT_PACKAGE_MANAGER=pip \
    CLEARML_AGENT_JOURNAL_DIR="$W/$name/journal" CLEARML_AGENT__AGENT__RUNS_DIR="$W/$name/runs" \
    CLEARML_AGENT__AGENT__VENVS_DIR="$W/$name/venvs" CLEARML_AGENT__AGENT__VENVS_CACHE__PATH="$W/$name/venvs-cache" \
    CLEARML_AGENT__AGENT__PID_FILE="$W/$name/daemon.pid" \
    "${extra[@]}" "$B" daemon --queue "$queue" --foreground --max-tasks 1 --polling-interval 1 "$@" \
    >"$W/$name.log" 2>&1 &
  pids+=($!)
}
start_daemon a gpu-check-a "${A_FLAGS[@]}"
PA=$!
start_daemon b gpu-check-b "${B_FLAGS[@]}"
PB=$!
echo "daemon a: ${A_FLAGS[*]:-(no flags)}  daemon b: ${B_FLAGS[*]:-(no flags)}"
# --max-tasks 1: each daemon exits after its task.
for _ in $(seq 600); do
  kill -0 "$PA" 2>/dev/null || kill -0 "$PB" 2>/dev/null || break
  sleep 0.5
done
fail=0
for d in a b; do
  p=$([ $d = a ] && echo "$PA" || echo "$PB")
  if kill -0 "$p" 2>/dev/null; then echo "daemon $d still running after 300 s"; fail=1; fi
  grep -E "worker|Worker" "$W/$d.log" | head -3 | sed "s/^/  daemon $d | /" || true
done
api check "$TA" "$A_WANT" "$UUIDS" || { fail=1; sed 's/^/  daemon a | /' "$W/a.log" | tail -30; }
api check "$TB" "$B_WANT" "$UUIDS" || { fail=1; sed 's/^/  daemon b | /' "$W/b.log" | tail -30; }
if [ "$fail" = 0 ]; then echo "gpu-check: PASS"; else echo "gpu-check: FAIL"; fi
exit "$fail"
