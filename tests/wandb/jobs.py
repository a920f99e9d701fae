"""Launch specs for the W&B tests: real Python processes that act like W&B jobs.

`wandb_job` registers its run with the server from the environment the agent gave it
(WANDB_BASE_URL, WANDB_API_KEY, WANDB_RUN_ID...), as `wandb.init` would, and reports what
it saw (its environment's W&B variables and its own command line) to a JSON file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PYTHON = sys.executable
PROJECT = "demo"

REGISTER_RUN = """
import base64, json, os, urllib.request
env = os.environ
doc = ("mutation UpsertBucket($name: String, $project: String, $entity: String) {"
       " upsertBucket(input: {name: $name, project: $project, entityName: $entity})"
       " { bucket { id name } inserted } }")
variables = {"name": env["WANDB_RUN_ID"], "project": env["WANDB_PROJECT"],
             "entity": env["WANDB_ENTITY"]}
body = json.dumps({"query": doc, "operationName": "UpsertBucket", "variables": variables})
auth = base64.b64encode(("api:" + env["WANDB_API_KEY"]).encode()).decode()
request = urllib.request.Request(
    env["WANDB_BASE_URL"] + "/graphql", body.encode(),
    {"Content-Type": "application/json", "Authorization": "Basic " + auth})
urllib.request.urlopen(request, timeout=10).read()
"""

_REPORT = """
import json, os
seen = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
seen["cmdline"] = open("/proc/self/cmdline", "rb").read().decode(errors="replace")
with open(REPORT, "w") as f:
    json.dump(seen, f)
"""


def py_spec(code: str, **extra: Any) -> dict[str, Any]:
    spec = {
        "resource": "local-process",
        "entity": "acme",
        "project": PROJECT,
        "overrides": {"entry_point": [PYTHON, "-c", code]},
    }
    spec.update(extra)
    return spec


def wandb_job(
    report: Path | None = None,
    sleep: float = 0.0,
    exit_code: int = 0,
    register: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A job that (optionally) registers its run, reports what it saw, sleeps, exits."""
    code = REGISTER_RUN if register else ""
    if report is not None:
        code += f"REPORT = {str(report)!r}\n" + _REPORT
    code += (
        f"import time, sys\ntime.sleep({sleep})\nprint('job output line')\nsys.exit({exit_code})\n"
    )
    return py_spec(code, **extra)


def read_report(report: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads(report.read_text())
    return data
