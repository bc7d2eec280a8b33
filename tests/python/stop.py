"""Asks a running task to stop, as the UI's abort does (`tasks.stop`, force=False). Usage: stop.py TASK_ID"""
import sys

from clearml import Task

Task.get_task(task_id=sys.argv[1]).stop_request(ignore_errors=False)
print('{"requested": true}')
