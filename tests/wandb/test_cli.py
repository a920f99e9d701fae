"""`launch-agent push` and `run` against W&B queues; listing commands say they need SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_lib import cli
from tests.wandb.conftest import ENTITY
from tests.wandb.jobs import PYTHON
from tests.wandb.server import FakeWandb


def backend_args(server: FakeWandb, tmp_path: Path) -> list[str]:
    return ["--backend", f"wandb+{server.base_url}", "--data-dir", str(tmp_path)]


def test_push_goes_through_push_to_run_queue_by_name(
    server: FakeWandb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["push", *backend_args(server, tmp_path), "-q", "default", "--entity", ENTITY,
         "--priority", "high", "--json", "--", PYTHON, "-c", "print(1)"]
    )  # fmt: skip

    assert code == cli.EXIT_OK
    item_id = json.loads(capsys.readouterr().out)["id"]
    (call,) = server.calls_of("pushToRunQueueByName")
    assert call.variables["entityName"] == ENTITY
    assert call.variables["projectName"] == "model-registry"
    assert call.variables["priority"] == 1
    item = server.item(item_id)
    assert item["priority"] == 1
    assert item["runSpec"]["overrides"]["entry_point"] == [PYTHON, "-c", "print(1)"]


def test_push_without_priority_sends_the_document_without_it(
    server: FakeWandb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCH_AGENT_ENTITY", ENTITY)
    code = cli.main(["push", *backend_args(server, tmp_path), "--", PYTHON, "-c", "pass"])

    assert code == cli.EXIT_OK
    (call,) = server.calls_of("pushToRunQueueByName")
    assert "priority" not in call.variables and "$priority" not in call.document


def test_run_serves_the_wandb_queue(
    server: FakeWandb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    item_id = server.push(
        "default",
        {"resource": "local-process",
         "overrides": {"entry_point": ["sh", "-c", f"touch {marker}"]}},
    )  # fmt: skip
    for key, value in {"POLL_INTERVAL": "0.02", "HEARTBEAT_INTERVAL": "0.1"}.items():
        monkeypatch.setenv(f"LAUNCH_AGENT_{key}", value)

    code = cli.main(["run", *backend_args(server, tmp_path), "-e", ENTITY, "--exit-when-idle"])

    assert code == cli.EXIT_OK
    assert marker.exists()
    assert server.item(item_id)["state"] == "CLAIMED"


def test_run_with_a_missing_queue_exits_with_a_config_error(
    server: FakeWandb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["run", *backend_args(server, tmp_path), "-e", ENTITY, "-q", "gpu"])

    assert code == cli.EXIT_USAGE
    assert "gpu not found in acme/model-registry; available queues: default" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("command", [["queues"], ["list"], ["show", "x"], ["agents"]])
def test_listing_commands_say_they_need_the_sql_backend(
    server: FakeWandb, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code = cli.main([*command, *backend_args(server, tmp_path)])

    assert code == cli.EXIT_USAGE
    assert "needs the SQL backend" in capsys.readouterr().err
    assert server.calls == []
