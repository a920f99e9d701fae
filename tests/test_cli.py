"""The `launch-agent` command as a user runs it: output people read, exit codes scripts use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def cli(*args: str, data_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_lib.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=REPO,
        env={**os.environ, "LAUNCH_AGENT_DATA_DIR": str(data_dir)},
        timeout=120,
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = cli("--help", data_dir=tmp_path)
    assert result.returncode == 0
    for command in ("run", "push", "queues", "list", "show", "cancel", "wait", "agents"):
        assert command in result.stdout
    push_help = cli("push", "--help", data_dir=tmp_path)
    assert "--priority" in push_help.stdout and "example:" in push_help.stdout


def test_push_run_list_show_wait(tmp_path: Path) -> None:
    ok = cli(
        "push", "-q", "demo", "--set", "lr=0.1", "--", "sh", "-c", "echo hi", data_dir=tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert "pushed item 1 to queue 'demo': sh -c echo hi" in ok.stdout
    bad = cli("push", "-q", "demo", "--", "sh", "-c", "echo oops; exit 4", data_dir=tmp_path)
    assert bad.returncode == 0

    queues = cli("queues", data_dir=tmp_path)
    assert queues.stdout.splitlines()[1].split()[:2] == ["demo", "2"]

    run = cli("run", "-q", "demo", "--exit-when-idle", data_dir=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "finished" in run.stderr and "FAILED in phase run" in run.stderr

    listing = cli("list", "--json", data_dir=tmp_path)
    states = {row["id"]: row["state"] for row in json.loads(listing.stdout)}
    assert states == {"1": "FINISHED", "2": "FAILED"}
    assert json.loads(listing.stdout)[1]["run_spec"]["overrides"]["run_config"] == {"lr": 0.1}

    show = cli("show", "2", data_dir=tmp_path)
    assert "failed in phase run: the job exited with code 4" in show.stdout
    assert "oops" in show.stdout

    assert cli("wait", "1", data_dir=tmp_path).returncode == 0
    assert cli("wait", "2", data_dir=tmp_path).returncode == 1


def test_push_from_a_spec_file_and_stdin(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("overrides:\n  entry_point: [echo, from-file]\nname: filed\n")
    assert cli("push", "--spec", str(spec), "--priority", "high", data_dir=tmp_path).returncode == 0
    from_stdin = cli(
        "push",
        "--spec",
        "-",
        "--json",
        data_dir=tmp_path,
        stdin='{"overrides": {"entry_point": ["echo", "piped"]}}',
    )
    assert json.loads(from_stdin.stdout) == {"id": "2", "queue": "default"}
    rows = json.loads(cli("list", "--json", data_dir=tmp_path).stdout)
    assert {r["id"]: r["priority"] for r in rows} == {"1": 1, "2": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["push"], "nothing to run"),
        (["push", "--priority", "urgent", "--", "true"], "--priority 'urgent'"),
        (["push", "--set", "novalue", "--", "true"], "expected KEY=VALUE"),
        (["push", "--run-config", "[1", "--", "true"], "--run-config: not a JSON object"),
        (["push", "--spec", "/no/such.json"], "cannot read /no/such.json"),
    ],
)
def test_bad_usage_exits_2_with_a_reason(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli(*args, data_dir=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_unknown_items_exit_3(tmp_path: Path) -> None:
    for command in ("show", "cancel", "wait"):
        result = cli(command, "99", data_dir=tmp_path)
        assert result.returncode == 3
        assert "no item '99'" in result.stderr
    assert cli("stop-agent", "ghost", data_dir=tmp_path).returncode == 3
    # The sweep commands live in another module; their errors are the CLI's all the same.
    sweep = cli("sweep", "show", "ghost", data_dir=tmp_path)
    assert (sweep.returncode, sweep.stderr) == (3, "launch-agent: no sweep 'ghost'\n")


def test_cancel_a_queued_item(tmp_path: Path) -> None:
    cli("push", "--", "true", data_dir=tmp_path)
    result = cli("cancel", "1", data_dir=tmp_path)
    assert result.returncode == 0
    assert "item 1 stopped" in result.stdout
    assert "item 1: STOPPED" in cli("wait", "1", data_dir=tmp_path).stdout


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("max_jobs: many\n")
    result = cli("run", "--config", str(config), data_dir=tmp_path)
    assert result.returncode == 2
    assert f"{config}: max_jobs" in result.stderr
