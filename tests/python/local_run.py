"""A local `Task.init` run: scalars, hyperparameters, console output and an artifact uploaded to the
files server. Usage: local_run.py PROJECT TASK_NAME. Prints the task id."""
import json
import sys

from clearml import Task

project, name = sys.argv[1:3]
task = Task.init(project_name=project, task_name=name, reuse_last_task_id=False, auto_connect_frameworks=False)
task.connect({"lr": 0.1, "epochs": 2})
logger = task.get_logger()
for i in range(5):
    logger.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
logger.report_scalar("acc", "val", value=0.9, iteration=4)
task.upload_artifact("stats", artifact_object={"rows": 42, "ok": True}, wait_on_upload=True)
print("printing to console")
task.flush(wait_for_uploads=True)
task.close()
print(json.dumps({"id": task.id}))
