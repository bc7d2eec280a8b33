"""SDK flow against the embedded server: create a task from a script, enqueue it, read it back.

Usage: sdk_flow.py SCRIPT PROJECT TASK_NAME. Prints one JSON object with what it observed.
"""
import json
import sys

from clearml import Task

script, project, name = sys.argv[1:4]
task = Task.create(project_name=project, task_name=name, script=script, packages=["six"], add_task_init_call=False)
created_status = task.get_status()
task.set_parameters({"General/lr": 0.25, "General/epochs": 3, "Extra/name": "adam"})
params = Task.get_task(task_id=task.id).get_parameters()
Task.enqueue(task, queue_name="default")
queued_status = Task.get_task(task_id=task.id).get_status()
listed = [t.id for t in Task.get_tasks(project_name=project)]
print(json.dumps({
    "id": task.id,
    "created_status": created_status,
    "queued_status": queued_status,
    "params": params,
    "listed": listed,
}))
