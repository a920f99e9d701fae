"""A W&B job, run by the agent as a real process: calls the real `wandb.init()` (offline, so
nothing is sent) and writes what the run sees to the file named by its first argument.

With `--register`, it also registers its run with the W&B server the agent named
(WANDB_BASE_URL), as an online `wandb.init` does, so a W&B queue's item finishes cleanly.
Standard library and `wandb` only.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.request


def register() -> None:
    env = os.environ
    doc = (
        "mutation UpsertBucket($name: String, $project: String, $entity: String) {"
        " upsertBucket(input: {name: $name, project: $project, entityName: $entity})"
        " { bucket { id name } inserted } }"
    )
    variables = {
        "name": env["WANDB_RUN_ID"],
        "project": env["WANDB_PROJECT"],
        "entity": env["WANDB_ENTITY"],
    }
    body = json.dumps({"query": doc, "operationName": "UpsertBucket", "variables": variables})
    auth = base64.b64encode(("api:" + env["WANDB_API_KEY"]).encode()).decode()
    request = urllib.request.Request(
        env["WANDB_BASE_URL"] + "/graphql",
        body.encode(),
        {"Content-Type": "application/json", "Authorization": "Basic " + auth},
    )
    urllib.request.urlopen(request, timeout=10).read()


def main() -> None:
    import wandb

    report = sys.argv[1]
    run = wandb.init()
    seen = {
        "id": run.id,
        "project": run.project,
        "entity": run.entity,
        "name": run.name,
        "config": dict(run.config),
        "sweep_id": run.sweep_id,
        "resume": run.settings.resume,
        "launch": run.settings.launch,
        "artifacts": dict(run._launch_artifact_mapping),
        "env": sorted(k for k in os.environ if k.startswith("WANDB_")),
        "username": os.environ.get("WANDB_USERNAME"),
        "docker": os.environ.get("WANDB_DOCKER"),
        "file_overrides": os.environ.get("WANDB_LAUNCH_FILE_OVERRIDES"),
    }
    run.finish()
    if "--register" in sys.argv:
        register()
    with open(report, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
