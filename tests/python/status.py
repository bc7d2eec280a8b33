"""Prints a task's status and its console output as the SDK reads them. Usage: status.py TASK_ID [N]"""
import json
import sys

from clearml import Task

task = Task.get_task(task_id=sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
print(json.dumps({
    "status": task.get_status(),
    "status_message": task.data.status_message,
    "status_reason": task.data.status_reason,
    "console": task.get_reported_console_output(number_of_reports=n),
}))
