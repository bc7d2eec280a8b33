"""Fills a server for the web page tests the way users do, with the SDK: a local `Task.init` run
(hyperparameters, scalars, console, an artifact), then tasks in each status. Usage: web_fill.py
PROJECT. Prints {"ids": {name: id}, "link": the SDK's results-page link of the local run}."""
import json
import sys

from clearml import Task

project = sys.argv[1]
ids = {}
run = Task.init(project_name=project, task_name="local run", reuse_last_task_id=False, auto_connect_frameworks=False)
run.connect({"lr": 0.1, "epochs": 2})
logger = run.get_logger()
for i in range(5):
    logger.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
run.upload_artifact("stats", artifact_object={"rows": 42}, wait_on_upload=True)
print("hello from the local run")
run.flush(wait_for_uploads=True)
ids["local run"] = run.id
link = run.get_output_log_web_page()
run.close()


def create(name, **kw):
    t = Task.create(project_name=project, task_name=name, repo="https://github.com/example/repo.git",
                    branch="main", script="train.py", packages=["six==1.16.0"], add_task_init_call=False, **kw)
    ids[name] = t.id
    return t


create("draft one")
for name in ["queued a", "queued b"]:
    Task.enqueue(create(name), queue_name="default")
failed = create("failed one")
failed.mark_started(force=True)
failed.mark_failed(status_reason="boom", force=True)
aborted = create("aborted one")
aborted.mark_started(force=True)
aborted.mark_stopped(force=True)
print(json.dumps({"ids": ids, "link": link}))
