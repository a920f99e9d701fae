"""W&B job artifacts for the tests: `wandb-job.json` of each source type, code, a git repo,
and a tiny wheel that pip installs offline (`--no-index --find-links`)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from tests.wandb.jobs import PROJECT, REGISTER_RUN
from tests.wandb.server import FakeWandb

# The job's code: stdlib only (its virtual environment has just its requirements). It
# registers its run as `wandb.init` would, then reports what it saw.
MAIN = (
    REGISTER_RUN
    + r"""
import sys
try:
    import tinylib
    lib = tinylib.VERSION
except ImportError:
    lib = None
seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), "python": sys.executable,
        "prefix": sys.prefix, "tinylib": lib, "version": VERSION,
        "artifacts": env.get("WANDB_ARTIFACTS"), "files": sorted(os.listdir("."))}
with open(env["REPORT"], "w") as f:
    json.dump(seen, f)
"""
)


def main_py(version: str) -> bytes:
    return f"VERSION = {version!r}\n{MAIN}".encode()


def job_json(source_type: str, source: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "_version": "v0",
            "source_type": source_type,
            "source": source,
            "input_types": {"wb_type": "typedDict", "params": {"type_map": {}}},
            "output_types": {"wb_type": "typedDict", "params": {"type_map": {}}},
            "runtime": "3.11",
        }
    ).encode()


def add_job(
    server: FakeWandb,
    name: str,
    source_type: str,
    source: dict[str, Any],
    requirements: str = "",
) -> str:
    """Log job artifact `name` (alias latest); returns the name items use."""
    server.add_artifact(
        name,
        "job",
        {
            "wandb-job.json": job_json(source_type, source),
            "requirements.frozen.txt": requirements.encode(),
        },
        project=PROJECT,
    )
    return f"{server.entity}/{PROJECT}/{name}:latest"


def git_repo(path: Path, versions: list[str]) -> list[str]:
    """A git repository with one commit of main.py per version; the commits' hashes."""
    path.mkdir(parents=True)
    env_args = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "--quiet", str(path)], check=True)
    commits = []
    for version in versions:
        (path / "main.py").write_bytes(main_py(version))
        subprocess.run(["git", "-C", str(path), "add", "main.py"], check=True)
        subprocess.run(
            ["git", *env_args, "-C", str(path), "commit", "--quiet", "-m", version], check=True
        )
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True
        )
        commits.append(head.stdout.decode().strip())
    return commits


def tiny_wheel(folder: Path, version: str = "1.0") -> Path:
    """A real, minimal wheel of package `tinylib`, for offline installs."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"tinylib-{version}-py3-none-any.whl"
    dist = f"tinylib-{version}.dist-info"
    files = {
        "tinylib/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: tinylib\nVersion: {version}\n"
        ).encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel
