"""Reads a finished local run back through the SDK. Usage: readback.py TASK_ID. Prints JSON."""
import json
import sys

from clearml import Task

task = Task.get_task(task_id=sys.argv[1])
scalars = task.get_reported_scalars()
artifact = task.artifacts["stats"]
print(json.dumps({
    "status": task.get_status(),
    "scalars": scalars,
    "last_metrics": task.get_last_scalar_metrics(),
    "params": task.get_parameters(),
    "artifact_url": artifact.url,
    "artifact": artifact.get(),
}))
