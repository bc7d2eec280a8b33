"""Reads a finished local run back through the SDK. Usage: readback.py TASK_ID. Prints JSON.

The SDK may hand its last events to a background reporter that is still sending when the run's
process exits (more so on a loaded machine), so the scalars are polled for up to a minute, as a
user reading a run right after it ends would retry."""
import json
import sys
import time

from clearml import Task

task = Task.get_task(task_id=sys.argv[1])
deadline = time.time() + 60
while True:
    scalars = task.get_reported_scalars()
    if len(scalars.get("loss", {}).get("train", {}).get("x", [])) >= 5 or time.time() > deadline:
        break
    time.sleep(0.5)
task.reload()
artifact = task.artifacts["stats"]
print(json.dumps({
    "status": task.get_status(),
    "scalars": scalars,
    "last_metrics": task.get_last_scalar_metrics(),
    "params": task.get_parameters(),
    "artifact_url": artifact.url,
    "artifact": artifact.get(),
}))
