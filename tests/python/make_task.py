"""Creates (and enqueues) a task the way a user would with the SDK: `Task.create` with a
repository, commit, entry point and packages, then the uncommitted diff. Usage: make_task.py JSON
where JSON has project, name, and optionally repo, branch, commit, script, working_dir, packages,
diff, binary, queue. Prints {"id": ...}."""
import json
import sys

from clearml import Task

spec = json.loads(sys.argv[1])
task = Task.create(
    project_name=spec["project"],
    task_name=spec["name"],
    repo=spec.get("repo"),
    branch=spec.get("branch"),
    commit=spec.get("commit"),
    script=spec.get("script"),
    working_directory=spec.get("working_dir"),
    packages=spec.get("packages"),
    add_task_init_call=False,
)
script = {}
if "diff" in spec:
    script["diff"] = spec["diff"]
if "binary" in spec:
    script["binary"] = spec["binary"]
if "entry_point" in spec:
    script["entry_point"] = spec["entry_point"]
if "requirements" in spec:
    script["requirements"] = {"pip": spec["requirements"]}
if script:
    task.update_task({"script": script})
if spec.get("queue"):
    Task.enqueue(task, queue_name=spec["queue"])
print(json.dumps({"id": task.id}))
