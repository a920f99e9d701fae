"""Hostile and mistaken input: the CLI answers with a reason and a documented exit code,
never a traceback (0 ok, 1 an operation failed, 2 bad usage or config, 3 no such item)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from agent_lib import cli
from agent_lib.backends.db_retry import DatabaseAccessError, Reconnector
from agent_lib.backends.sql_url import display_url
from agent_lib.config import AgentConfig, warn_unknown_environment
from agent_lib.errors import ConfigError
from tests.helpers import REPO


def run_main(
    capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str
) -> tuple[int, str, str]:
    """`launch-agent ARGS` in this process: exit code, stdout, stderr."""
    try:
        code = cli.main([*args[:1], "--data-dir", str(data_dir), *args[1:]])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent_lib.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result


# -- item ids: show, wait and cancel agree: what cannot be an id is no such item (exit 3) --
@pytest.mark.parametrize("command", ["show", "wait", "cancel"])
@pytest.mark.parametrize("item", ["abc", "1.5", "-1", "0", "", " ", "99999999999999999999", "١٢"])
def test_impossible_item_ids_are_no_such_item(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, item: str
) -> None:
    code, _, err = run_main(capsys, tmp_path, command, "--", item)
    assert code == cli.EXIT_NOT_FOUND
    assert f"no item {item!r} (item ids are whole numbers)" in err


def test_cancel_abc_in_a_real_process(tmp_path: Path) -> None:
    result = run_process("cancel", "abc", "--data-dir", str(tmp_path))
    assert result.returncode == 3
    assert "no item 'abc'" in result.stderr


def test_the_largest_id_the_database_holds_is_just_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_main(capsys, tmp_path, "show", str(2**63 - 1))
    assert code == cli.EXIT_NOT_FOUND
    assert f"no item '{2**63 - 1}'" in err


# -- the config file --
def test_config_naming_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_main(capsys, tmp_path, "queues", "--config", str(tmp_path))
    assert code == cli.EXIT_USAGE
    assert f"{tmp_path}: is a folder, not a config file" in err


def test_config_naming_a_binary_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    binary = tmp_path / "agent.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01 not text")
    code, _, err = run_main(capsys, tmp_path, "queues", "--config", str(binary))
    assert code == cli.EXIT_USAGE
    assert f"{binary}: not a text file (byte 0 is not UTF-8)" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must be a mapping of keys to values"),
        ("just words\n", "must be a mapping of keys to values"),
        ("max_jobs: [1]\n", "max_jobs: Input should be a valid integer"),
        ("queues: 5\n", "queues: Input should be a valid list"),
        ("queues: ['', a]\n", "queues: Value error, a queue name must not be empty"),
        ("queues: ['  ']\n", "a queue name must not be empty or blank"),
        ("1: 2\n", "key 1 is not a name"),
        ("poll_interval: .inf\n", "poll_interval: Input should be a finite number"),
        ("jobs: [train]\n", "jobs: Input should be a valid dictionary"),
        ("queues: [a\n", "not valid YAML"),
        ("!!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ],
)
def test_bad_config_files_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, _, err = run_main(capsys, tmp_path, "run", "--config", str(config))
    assert code == cli.EXIT_USAGE
    assert message in err
    assert str(config) in err


def test_an_empty_config_file_is_no_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("")
    code, out, _ = run_main(capsys, tmp_path, "queues", "--config", str(config))
    assert code == cli.EXIT_OK
    assert "no queues yet" in out


def test_config_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        AgentConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="cannot read the config file: File name too long"):
        AgentConfig.load(tmp_path / ("x" * 300))


def test_empty_data_dir_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli.main(["queues", "--data-dir", ""])
    _, err = capsys.readouterr()
    assert code == cli.EXIT_USAGE
    assert "data_dir: Value error, must not be empty" in err


# -- backend URLs --
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:////proc/nope/q.db", "cannot create the folder /proc/nope for the queue file"),
        ("sqlite:///{tmp}/afile/q.db", "cannot create the folder {tmp}/afile for the queue file"),
        ("sqlite:///{tmp}", "unable to open database file"),
        ("sqlite:///{tmp}/afile", "file is not a database"),
        ("mysql://u:s3cret@h/db", "unsupported backend URL 'mysql://u:***@h/db'"),
        ("postgresql://u:s3cret@h:notaport/db", "backend URL postgresql://u:***@h:notaport/db"),
        ("postgresql+nodriver://u:s3cret@h/db", "Can't load plugin"),
    ],
)
def test_bad_backend_urls_exit_2_naming_the_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, message: str
) -> None:
    (tmp_path / "afile").write_text("not a database, not a folder\n")
    url, message = url.format(tmp=tmp_path), message.format(tmp=tmp_path)
    for command in (["queues"], ["push", "--", "true"]):
        code, _, err = run_main(capsys, tmp_path, *command[:1], "--backend", url, *command[1:])
        assert code == cli.EXIT_USAGE
        assert message in err
        assert "s3cret" not in err


def test_bad_sqlite_path_in_a_real_process(tmp_path: Path) -> None:
    result = run_process("queues", "--backend", "sqlite:////proc/nope/q.db")
    assert result.returncode == 2
    assert "sqlite:////proc/nope/q.db: cannot create the folder /proc/nope" in result.stderr


def test_a_closed_port_gives_up_within_seconds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = "postgresql://u:s3cret@127.0.0.1:1/db"  # port 1: nothing listens
    started = time.monotonic()
    code, _, err = run_main(capsys, tmp_path, "queues", "--backend", url)
    assert time.monotonic() - started < cli.CLI_RETRY_WINDOW + 10
    assert code == cli.EXIT_FAILED
    assert "has been unreachable for 5s" in err and "Connection refused" in err
    assert "s3cret" not in err
    assert "u:***@127.0.0.1:1" in err


def test_an_unknown_host_fails_at_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = "postgresql://u:s3cret@no-such-host.invalid/db"
    started = time.monotonic()
    code, _, err = run_main(capsys, tmp_path, "push", "--backend", url, "--", "true")
    assert time.monotonic() - started < 3
    assert code == cli.EXIT_USAGE
    assert "cannot use the queue database at" in err and "u:***@no-such-host.invalid" in err


def _pg_admin_url() -> str:
    from tests.backend.pg import admin_url

    return admin_url()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"password": "wrong-s3cret"}, "password authentication failed"),
        ({"database": "la_no_such_database"}, 'database "la_no_such_database" does not exist'),
    ],
)
def test_permanent_postgres_errors_fail_fast(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    url = make_url(_pg_admin_url()).set(**change).render_as_string(hide_password=False)
    for command in (["queues"], ["push", "--", "true"]):
        started = time.monotonic()
        code, _, err = run_main(capsys, tmp_path, *command[:1], "--backend", url, *command[1:])
        assert time.monotonic() - started < 3
        assert code == cli.EXIT_USAGE
        assert message in err
        assert "wrong-s3cret" not in err
        assert "cannot use the queue database at postgresql" in err and ":***@" in err


def test_wrong_password_in_a_real_process() -> None:
    url = make_url(_pg_admin_url()).set(password="wrong-s3cret").render_as_string(False)
    started = time.monotonic()
    result = run_process("queues", "--backend", url)
    assert time.monotonic() - started < 10
    assert result.returncode == 2
    assert "password authentication failed" in result.stderr
    assert "check the user and password" in result.stderr
    assert "wrong-s3cret" not in result.stderr


def _operational(message: str) -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(message))


def test_reconnector_tells_permanent_errors_from_outages() -> None:
    pg = Reconnector("postgresql://u:***@h/db", "postgresql", window=60)
    refused = _operational("connection failed: ... port 5432 failed: Connection refused")
    password = _operational('connection failed: FATAL:  password authentication failed for "u"')
    unknown_host = _operational("failed to resolve host 'hq': [Errno -2] Name or service not known")
    dns_blip = _operational("failed to resolve host 'hq': Temporary failure in name resolution")
    assert not pg.is_permanent(refused) and pg.is_outage(refused)
    assert pg.is_permanent(password)
    assert pg.is_permanent(unknown_host)
    assert not pg.is_permanent(dns_blip)
    with pytest.raises(DatabaseAccessError, match=r"at postgresql://u:\*\*\*@h/db: .*password"):
        pg.call(lambda: (_ for _ in ()).throw(password))
    # Once the database answered, a name that stops resolving is DNS away: an outage.
    pg.call(lambda: None)
    assert not pg.is_permanent(unknown_host)
    assert pg.is_permanent(password)


def test_agents_keep_the_long_retry_window(tmp_path: Path) -> None:
    config = AgentConfig.load(data_dir=tmp_path)
    interactive = cli.open_any_backend(config)
    agent = cli.open_any_backend(config, interactive=False)
    try:
        assert interactive._reconnect.window == cli.CLI_RETRY_WINDOW  # type: ignore[union-attr]
        assert agent._reconnect.window == 120.0  # type: ignore[union-attr]
    finally:
        interactive.close()
        agent.close()


def test_display_url_never_shows_the_password() -> None:
    assert display_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "pw" not in display_url("postgresql://u:p@w@h:notaport/db")


# -- environment --
def test_unknown_launch_agent_variables_are_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LAUNCH_AGENT_BOGUS_KEY", "1")
    monkeypatch.setenv("LAUNCH_AGENT_MAX_JOB", "3")
    for ours in ("LAUNCH_AGENT_TEST_ANYTHING", "LAUNCH_AGENT_CRASH_AT", "LAUNCH_AGENT_CONFIG"):
        monkeypatch.setenv(ours, "")
    monkeypatch.setenv("LAUNCH_AGENT_REQUIRE_SERVICES", os.environ.get("X_UNUSED", "0"))
    monkeypatch.setenv("LAUNCH_AGENT_MAX_JOBS", "2")
    with caplog.at_level(logging.WARNING, logger="agent_lib.config"):
        assert warn_unknown_environment() == ["LAUNCH_AGENT_BOGUS_KEY", "LAUNCH_AGENT_MAX_JOB"]
    assert "LAUNCH_AGENT_MAX_JOB is not a config key, ignored (did you mean " in caplog.text
    assert "LAUNCH_AGENT_MAX_JOBS?)" in caplog.text
    assert "LAUNCH_AGENT_BOGUS_KEY is not a config key" in caplog.text


def test_unknown_variable_warning_in_a_real_process(tmp_path: Path) -> None:
    result = run_process(
        "queues",
        env={"LAUNCH_AGENT_DATA_DIR": str(tmp_path), "LAUNCH_AGENT_POLL_INTERVALL": "1"},
    )
    assert result.returncode == 0
    assert (
        "LAUNCH_AGENT_POLL_INTERVALL is not a config key, ignored (did you mean "
        "LAUNCH_AGENT_POLL_INTERVAL?)" in result.stderr
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (" , ", "List should have at least 1 item"),
        ('[""]', "a queue name must not be empty"),
        ("[1", "Expecting ',' delimiter"),
    ],
)
def test_bad_queue_variables(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv("LAUNCH_AGENT_QUEUES", value)
    code, _, err = run_main(capsys, tmp_path, "run")
    assert code == cli.EXIT_USAGE
    assert "environment variable LAUNCH_AGENT_QUEUES: queues" in err and message in err


# -- queue names and push --
@pytest.mark.parametrize("name", ["", "   ", "a\tb", "q" * 129])
def test_bad_queue_names_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    code, _, err = run_main(capsys, tmp_path, "push", "-q", name, "--", "true")
    assert code == cli.EXIT_USAGE
    assert "--queue: a queue name" in err
    code, _, err = run_main(capsys, tmp_path, "run", "-q", name)
    assert code == cli.EXIT_USAGE
    assert "argument: queues: Value error, a queue name" in err


def test_unknown_resource_is_refused_at_push(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_main(capsys, tmp_path, "push", "--resource", "k8s", "--", "true")
    assert code == cli.EXIT_USAGE
    supported = "kubernetes, local-container, local-process"
    assert f"resource 'k8s' is not supported (supported: {supported})" in err
    spec = tmp_path / "spec.yaml"
    spec.write_text("resource: slurm\noverrides: {entry_point: [echo]}\n")
    code, _, err = run_main(capsys, tmp_path, "push", "--spec", str(spec))
    assert code == cli.EXIT_USAGE
    assert "resource 'slurm' is not supported" in err
    code, out, _ = run_main(capsys, tmp_path, "queues")
    assert "no queues yet" in out  # nothing was queued


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--run-config", "[1]", "--", "true"],
            "--run-config: not a JSON object ({...}) but a list",
        ),
        (["--run-config", "null", "--", "true"], "but a NoneType"),
        (["--set", "a=[", "--", "true"], "--set 'a=[': VALUE is not valid YAML"),
        (["--priority", "٣", "--", "true"], "--priority '٣'"),
        (["--priority", "", "--", "true"], "--priority ''"),
        (["--", ""], "the command after '--' must not start with an empty word"),
        (["--run-id", "../../etc", "--", "true"], "run_id: must be 1 to 64 characters"),
    ],
)
def test_bad_push_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    code, _, err = run_main(capsys, tmp_path, "push", *args)
    assert code == cli.EXIT_USAGE
    assert message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00", "not a text file (byte 0 is not UTF-8)"),
        (b"overrides: 5\n", "overrides must be a mapping"),
        (b"overrides: {run_config: [1]}\n", "overrides.run_config must be a mapping"),
        (b"resource: [x]\noverrides: {entry_point: [echo]}\n", "resource"),
        (b"", "a launch spec must be a mapping"),
    ],
)
def test_bad_spec_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, message: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    code, _, err = run_main(capsys, tmp_path, "push", "--spec", str(spec))
    assert code == cli.EXIT_USAGE
    assert message in err
    code, _, err = run_main(capsys, tmp_path, "push", "--spec", str(tmp_path))
    assert code == cli.EXIT_USAGE
    assert "Is a directory" in err


def test_binary_spec_on_stdin(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent_lib.cli", "push", "--spec", "-", "--data-dir", str(tmp_path)],
        input=b"\xff\xfe",
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"stdin is not text" in result.stderr and b"Traceback" not in result.stderr


def test_unicode_queue_and_command_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run_main(capsys, tmp_path, "push", "-q", "é🚀", "--", "echo", "ü")
    assert code == cli.EXIT_OK and "queue 'é🚀': echo ü" in out
    code, out, _ = run_main(capsys, tmp_path, "list", "-q", "é🚀")
    assert code == cli.EXIT_OK and "é🚀" in out


# -- numbers the parser refuses (exit 2, argparse's message) --
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "-n", "-1"], "argument -n/--limit: invalid positive whole number value"),
        (["list", "-n", "0"], "invalid positive whole number value: '0'"),
        (["list", "-n", "99999999999999999999"], "invalid positive whole number value"),
        (["show", "1", "--lines", "-5"], "argument --lines: invalid positive whole number"),
        (["wait", "1", "--timeout", "nan"], "invalid number of seconds (0 or more) value"),
        (["wait", "1", "--timeout", "inf"], "invalid number of seconds (0 or more) value"),
        (["wait", "1", "--timeout", "-1"], "invalid number of seconds (0 or more) value"),
        (["run", "-j", "abc"], "argument -j/--max-jobs: invalid int value"),
        (["run", "--poll-interval", "inf"], "poll_interval: Input should be a finite number"),
        (["run", "--poll-interval", "nan"], "poll_interval: Input should be a finite number"),
        (["run", "--name", ""], "name: String should have at least 1 character"),
        (["show"], "the following arguments are required: item"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_numbers_and_arguments_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    code, _, err = run_main(capsys, tmp_path, *args)
    assert code == cli.EXIT_USAGE
    assert message in err


def test_wait_with_zero_timeout_looks_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_main(capsys, tmp_path, "push", "--", "true")
    code, _, err = run_main(capsys, tmp_path, "wait", "1", "--timeout", "0")
    assert code == cli.EXIT_FAILED
    assert "item 1 is still PENDING after 0.0s" in err


def test_an_unexpected_error_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(_args: object) -> int:
        raise KeyError("token=abc")

    monkeypatch.setattr(cli, "cmd_queues", boom)  # build_parser looks it up on each call
    code, _, err = run_main(capsys, tmp_path, "queues")
    assert code == cli.EXIT_FAILED
    assert err.startswith("launch-agent: unexpected error: KeyError:")
