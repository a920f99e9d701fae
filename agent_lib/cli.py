"""`launch-agent`: run the agent (no Prefect needed) and work with its queues.

Exit codes: 0 success; 1 an operation failed (backend, or `wait` on an item that did not
finish); 2 bad usage or config (a backend URL, password or key the backend refuses is
config); 3 no such item or agent (an id that cannot be one, like `abc`, too). Whatever
the input, the user gets one line saying what is wrong, never a traceback.

Only light modules are imported here; each command imports what it needs (SQLAlchemy,
pydantic, the config), so `--help` answers at once and `push` pays for no more than it
uses (bench/bench_cli.py measures both).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_lib import __version__
from agent_lib.backends.item_keys import MAX_ITEM_ID
from agent_lib.backends.item_keys import item_key as database_item_key
from agent_lib.backends.sql_url import display_url, is_sql_url, sqlalchemy_url
from agent_lib.backends.wandb_auth import is_wandb_url
from agent_lib.errors import BackendError, ConfigError, TransientError, WandbAuthError
from agent_lib.files import job_dir_for
from agent_lib.redact import (
    install_log_redaction,
    redact,
    redact_mapping,
    register_secrets_in,
)
from agent_lib.states import TERMINAL_ITEM_STATES, ItemState
from agent_lib.sweep_parser import add_sweep_commands
from agent_lib.yaml_text import load_yaml

if TYPE_CHECKING:  # imported where used (see the module docstring)
    from agent_lib.agent import LaunchAgent
    from agent_lib.backends import SqlBackend
    from agent_lib.backends.base import ItemInfo
    from agent_lib.backends.wandb import WandbBackend
    from agent_lib.config import AgentConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

# Commands other than `run` are interactive: they wait out a database outage this long
# (an agent rides out two minutes), and give up on an unanswered connection after this.
CLI_RETRY_WINDOW = 5.0
CLI_CONNECT_TIMEOUT = 5

PRIORITIES = {"critical": 0, "high": 1, "medium": 2, "low": 3}
STATE_COLUMNS = [s.value for s in ItemState]


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- argument types (argparse turns their ValueError into a usage error, exit 2) --
def positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_ITEM_ID:  # a database LIMIT holds no more
        raise ValueError(text)
    return value


def non_negative_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


positive_int.__name__ = "positive whole number"  # argparse names the type in its message
non_negative_seconds.__name__ = "number of seconds (0 or more)"


# -- parser --
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="agent config YAML (default: $LAUNCH_AGENT_CONFIG or "
        "~/.config/launch-agent/launch-config.yaml)",
    )
    common.add_argument(
        "--backend",
        metavar="URL",
        help="queue backend URL: sqlite:///PATH, postgresql://..., or wandb / "
        "wandb+https://HOST for W&B's queues (default: sqlite file in the data dir; "
        "env LAUNCH_AGENT_BACKEND_URL)",
    )
    common.add_argument("--data-dir", metavar="DIR", help="where the queue and job folders live")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")

    parser = argparse.ArgumentParser(
        prog="launch-agent",
        description="A launch agent for ML and batch jobs: polls run queues and runs each "
        "item as a job (W&B Launch compatible).",
        epilog="Run 'launch-agent COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="start the agent",
        description="Start the agent: poll the queues and run their items until stopped "
        "(SIGTERM/Ctrl-C: stop popping and let jobs finish; twice: cancel and requeue them).",
    )
    run.add_argument(
        "-q",
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help="queue to serve (repeat for several; default: config, or 'default')",
    )
    run.add_argument("-e", "--entity", help="entity (W&B) the agent works for")
    run.add_argument("-j", "--max-jobs", type=int, help="jobs at once (-1: unlimited)")
    run.add_argument("--max-schedulers", type=int, help="sweep schedulers at once (-1: unlimited)")
    run.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="how often an idle agent looks at its queues",
    )
    run.add_argument(
        "--exit-when-idle",
        action="store_true",
        default=None,
        help="exit once the queues are empty and no job runs",
    )
    run.add_argument(
        "--on-stop",
        choices=["wait", "requeue"],
        help="on stop: let running jobs finish, or cancel and requeue them",
    )
    run.add_argument(
        "--name",
        dest="agent_name",
        help="the agent's identity (default: one per host and data dir); restarted with "
        "the same name, it takes back the jobs it left running",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more status output (repeat for debug logs)",
    )
    run.set_defaults(handler=cmd_run)

    push = sub.add_parser(
        "push",
        parents=[common],
        help="add an item to a queue",
        description="Add an item to a queue, from a launch spec file and/or a command.",
        epilog="example: launch-agent push -q default --set lr=0.1 -- python train.py --epochs 3",
    )
    push.add_argument("-q", "--queue", default="default", help="queue name (default: default)")
    push.add_argument("--spec", metavar="FILE", help="launch spec, JSON or YAML ('-' for stdin)")
    push.add_argument(
        "--priority", default=None, help="critical, high, medium (default) or low, or 0-3"
    )
    push.add_argument("--name", help="run name (WANDB_NAME)")
    push.add_argument("--run-id", help="run id to use (default: a new one)")
    push.add_argument("--job", help="a named job from the agent's config")
    push.add_argument(
        "--resource", help="where to run: local-process (default), local-container, kubernetes"
    )
    push.add_argument("--image", help="docker image (for local-container)")
    push.add_argument("--run-config", metavar="JSON", help="run config as JSON (WANDB_CONFIG)")
    push.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one run config value (repeatable; VALUE parsed as YAML)",
    )
    push.add_argument("--entity")
    push.add_argument("--project")
    push.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after '--': the command to run (sets overrides.entry_point)",
    )
    push.set_defaults(handler=cmd_push)

    queues = sub.add_parser("queues", parents=[common], help="list queues and item counts")
    queues.set_defaults(handler=cmd_queues)

    items = sub.add_parser("list", parents=[common], help="list items")
    items.add_argument("-q", "--queue", help="only this queue")
    items.add_argument(
        "--state",
        action="append",
        type=str.upper,
        choices=STATE_COLUMNS,
        help="only items in this state (repeatable)",
    )
    items.add_argument(
        "-n", "--limit", type=positive_int, default=30, help="at most this many (30)"
    )
    items.set_defaults(handler=cmd_list)

    show = sub.add_parser("show", parents=[common], help="show one item, with its log tail")
    show.add_argument("item", help="item id")
    show.add_argument("--lines", type=positive_int, default=20, help="log lines to show (20)")
    show.set_defaults(handler=cmd_show)

    cancel = sub.add_parser(
        "cancel",
        parents=[common],
        help="cancel an item",
        description="Cancel an item. A queued item stops now; a running one is asked to stop "
        "and its agent cancels it after stopped_run_timeout.",
    )
    cancel.add_argument("item", help="item id")
    cancel.set_defaults(handler=cmd_cancel)

    wait = sub.add_parser(
        "wait", parents=[common], help="wait for an item to end; exit 0 if it finished"
    )
    wait.add_argument("item", help="item id")
    wait.add_argument(
        "--timeout", type=non_negative_seconds, help="give up after this many seconds"
    )
    wait.set_defaults(handler=cmd_wait)

    agents = sub.add_parser("agents", parents=[common], help="list agents")
    agents.set_defaults(handler=cmd_agents)

    stop = sub.add_parser(
        "stop-agent", parents=[common], help="ask an agent to stop (sets stopPolling on its record)"
    )
    stop.add_argument("agent", help="agent id or name")
    stop.set_defaults(handler=cmd_stop_agent)

    add_sweep_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    install_log_redaction()
    from agent_lib.backends.db_retry import DatabaseAccessError  # once parsing is done

    try:
        with short_connect_timeout(args.handler is not cmd_run):
            return int(args.handler(args))
    except CliError as exc:
        return fail(str(exc), exc.code)
    except (ConfigError, DatabaseAccessError, WandbAuthError) as exc:
        # A wrong URL, password or key is bad config: retrying the same command cannot help.
        return fail(str(exc), EXIT_USAGE)
    except (BackendError, TransientError) as exc:
        return fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `launch-agent list | head`: the reader is gone, nothing to say
        with contextlib.suppress(OSError, ValueError):  # Python's advice: point stdout at
            devnull = os.open(os.devnull, os.O_WRONLY)  # devnull, or the flush at exit fails
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # never a traceback for the user; say what and where
        logging.getLogger("agent_lib").debug("unexpected error", exc_info=True)
        return fail(f"unexpected error: {type(exc).__name__}: {redact(str(exc))}", EXIT_FAILED)


def fail(message: str, code: int) -> int:
    print(f"launch-agent: {message}", file=sys.stderr)
    return code


# -- helpers --
def load_config(args: argparse.Namespace, **overrides: Any) -> AgentConfig:
    from agent_lib.config import AgentConfig

    return AgentConfig.load(
        args.config, backend_url=args.backend, data_dir=args.data_dir, **overrides
    )


def open_any_backend(config: AgentConfig, interactive: bool = True) -> SqlBackend | WandbBackend:
    """The backend the config names, for commands that need only the Backend protocol.

    `interactive` (every command but `run`): a short wait for an unreachable database
    (CLI_RETRY_WINDOW) and no NOTIFY listener; an agent waits out outages for minutes.
    """
    from sqlalchemy.exc import ArgumentError

    from agent_lib.backends import SqlBackend, open_backend

    url = config.resolved_backend_url
    shown = display_url(url)
    if not is_sql_url(url) and not is_wandb_url(url):
        raise CliError(
            f"unsupported backend URL {shown!r}: use sqlite:///PATH, postgresql://..., "
            "wandb or wandb+https://HOST",
            EXIT_USAGE,
        )
    try:
        if interactive and is_sql_url(url):
            return SqlBackend(
                sqlalchemy_url(url),
                config.lease_seconds,
                retry_window=CLI_RETRY_WINDOW,
                listen=False,
            )
        return open_backend(url, config.lease_seconds)
    except (ValueError, ArgumentError) as exc:
        raise CliError(f"backend URL {shown}: {_first_line(exc)}", EXIT_USAGE) from exc
    except OSError as exc:  # the SQLite file's folder cannot be made
        where = exc.filename if exc.filename is not None else "its folder"
        why = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            why = "a file is in the way"
        raise CliError(
            f"backend URL {shown}: cannot create the folder {where} for the queue file ({why})",
            EXIT_USAGE,
        ) from exc


@contextlib.contextmanager
def short_connect_timeout(interactive: bool) -> Iterator[None]:
    """For interactive commands, PGCONNECT_TIMEOUT (unless set): a PostgreSQL host that does
    not answer at all fails after seconds, not the driver's two minutes. A URL's own
    `connect_timeout` still wins."""
    if not interactive or "PGCONNECT_TIMEOUT" in os.environ:
        yield
        return
    os.environ["PGCONNECT_TIMEOUT"] = str(CLI_CONNECT_TIMEOUT)
    try:
        yield
    finally:
        os.environ.pop("PGCONNECT_TIMEOUT", None)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_queue_db(config: AgentConfig) -> SqlBackend:
    """The SQL backend: listing and inspecting commands read its tables directly."""
    from agent_lib.backends import SqlBackend

    backend = open_any_backend(config)
    if not isinstance(backend, SqlBackend):
        backend.close()
        raise CliError(
            "this command needs the SQL backend (sqlite:// or postgresql://); "
            "W&B queues are listed in the W&B UI (Launch)",
            EXIT_USAGE,
        )
    return backend


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return f"{duration(time.time() - timestamp)} ago"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def what_runs(spec: dict[str, Any]) -> str:
    overrides = spec.get("overrides") or {}
    entry = overrides.get("entry_point") if isinstance(overrides, dict) else None
    args = overrides.get("args") if isinstance(overrides, dict) else None
    if isinstance(entry, list):
        parts = [*entry, *(args if isinstance(args, list) else [])]
        return redact(" ".join(str(p) for p in parts))
    docker = spec.get("docker")
    image = docker.get("docker_image") if isinstance(docker, dict) else None
    return str(spec.get("job") or image or spec.get("image_uri") or "?")


def item_key(item_id: str) -> str:
    """An item id as the database stores it; "no such item" (exit 3) for what cannot be one.

    Ids are whole numbers: `abc`, `1.5`, `-1` or one too large for the database cannot
    name an item, just as an unused number does not.
    """
    text = item_id.strip()
    key = database_item_key(text) if text.isascii() and text.isdigit() else None
    if key is None:
        raise CliError(f"no item {item_id!r} (item ids are whole numbers)", EXIT_NOT_FOUND)
    return str(key)


def get_item_or_fail(db: SqlBackend, item_id: str) -> ItemInfo:
    info = db.get_item(item_key(item_id))
    if info is None:
        raise CliError(f"no item {item_id!r}", EXIT_NOT_FOUND)
    return info


def describe_end(info: ItemInfo) -> str:
    """`failed in phase run: ...` for a failure; the record's message for other ends."""
    if info.failure_phase and info.state is ItemState.FAILED:
        return f"failed in phase {info.failure_phase}: {info.failure_message}"
    return info.failure_message or ""


def info_note(info: ItemInfo) -> str:
    """The short note of the item listing: `run: the job exited with code 3`."""
    if not info.failure_message:
        return ""
    if info.failure_phase and info.state is ItemState.FAILED:
        return f"{info.failure_phase}: {info.failure_message}"
    return info.failure_message


def requester() -> str:
    """Who asks, as the item's record will say: `user@host`."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def item_dict(info: ItemInfo) -> dict[str, Any]:
    """An item for --json: its secrets (and wherever they were echoed) masked."""
    register_secrets_in(info.run_spec)
    data = redact_mapping(dict(vars(info)))
    data["state"] = info.state.value
    return dict(data)


# -- commands --
def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(
        args,
        queues=args.queues,
        entity=args.entity,
        max_jobs=args.max_jobs,
        max_schedulers=args.max_schedulers,
        poll_interval=args.poll_interval,
        exit_when_idle=args.exit_when_idle,
        on_stop=args.on_stop,
        name=args.agent_name,
        verbosity=min(args.verbose, 3) or None,
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose >= 2 else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        stream=sys.stderr,
    )
    if args.verbose < 2:
        logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    db = open_any_backend(config, interactive=False)
    from agent_lib.agent import LaunchAgent

    agent = LaunchAgent(db, config)
    logging.getLogger("agent_lib").info(
        "agent %s started: queues %s, max_jobs %s, backend %s, jobs in %s",
        agent.name(),
        ", ".join(config.queues),
        config.max_jobs,
        db.display_url,
        config.jobs_dir,
    )
    import asyncio

    asyncio.run(_run_with_signals(agent))
    db.close()
    return EXIT_OK


async def _run_with_signals(agent: LaunchAgent) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    presses = {"count": 0}

    def on_signal(signum: int) -> None:
        presses["count"] += 1
        name = signal.Signals(signum).name
        if presses["count"] == 1 and agent.config.on_stop != "requeue":
            agent.stop(reason=f"{name}: finishing running jobs (again to cancel and requeue)")
        else:
            agent.stop(requeue=True, reason=f"{name}: cancelling and requeueing running jobs")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await agent.loop()


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    from agent_lib.spec import LOCAL_PROCESS, LaunchSpec

    spec: dict[str, Any] = {}
    if args.spec:
        text = _read_stdin() if args.spec == "-" else _read_text(args.spec)
        try:
            loaded = load_yaml(text)  # YAML is a superset of JSON
        except ValueError as exc:
            raise CliError(f"{args.spec}: not valid JSON or YAML: {exc}", EXIT_USAGE) from exc
        if not isinstance(loaded, dict):
            raise CliError(f"{args.spec}: a launch spec must be a mapping", EXIT_USAGE)
        spec = loaded
    overrides = spec.get("overrides")
    if overrides is None:
        overrides = spec["overrides"] = {}
    if not isinstance(overrides, dict):
        raise CliError(f"{args.spec}: overrides must be a mapping", EXIT_USAGE)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if command and not command[0].strip():
        raise CliError("the command after '--' must not start with an empty word", EXIT_USAGE)
    if command:
        overrides["entry_point"] = command
        spec.setdefault("resource", LOCAL_PROCESS)
    run_config = overrides.get("run_config")
    if run_config is None:
        run_config = overrides["run_config"] = {}
    if not isinstance(run_config, dict):
        raise CliError(f"{args.spec}: overrides.run_config must be a mapping", EXIT_USAGE)
    if args.run_config:
        try:
            given = json.loads(args.run_config)
        except ValueError as exc:
            raise CliError(f"--run-config: not a JSON object: {exc}", EXIT_USAGE) from exc
        if not isinstance(given, dict):
            raise CliError(
                f"--run-config: not a JSON object ({{...}}) but a {type(given).__name__}",
                EXIT_USAGE,
            )
        run_config.update(given)
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--set {pair!r}: expected KEY=VALUE", EXIT_USAGE)
        try:
            run_config[key] = load_yaml(value)
        except ValueError as exc:
            first = (str(exc).splitlines() or ["?"])[0]
            raise CliError(
                f"--set {pair!r}: VALUE is not valid YAML ({first})", EXIT_USAGE
            ) from exc
    simple = {
        "name": args.name,
        "run_id": args.run_id,
        "job": args.job,
        "resource": args.resource,
        "entity": args.entity,
        "project": args.project,
    }
    spec.update({k: v for k, v in simple.items() if v is not None})
    if args.image:
        spec.setdefault("docker", {})["docker_image"] = args.image
    if (
        not overrides.get("entry_point")
        and not spec.get("job")
        and not args.image
        and not spec.get("image_uri")
        and not (spec.get("docker") or {}).get("docker_image")
    ):
        raise CliError(
            "nothing to run: give a command after '--', --job, --image or --spec", EXIT_USAGE
        )
    LaunchSpec.parse(spec)  # refuse what the agent would refuse, before it is queued
    return spec


def _read_stdin() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(
            f"--spec -: stdin is not text (byte {exc.start} is not UTF-8)", EXIT_USAGE
        ) from exc


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8)", EXIT_USAGE
        ) from exc
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from exc


def parse_priority(value: str | None) -> int | None:
    if value is None:
        return None
    if value.lower() in PRIORITIES:
        return PRIORITIES[value.lower()]
    if value in ("0", "1", "2", "3"):
        return int(value)
    raise CliError(f"--priority {value!r}: use critical, high, medium, low or 0-3", EXIT_USAGE)


def cmd_push(args: argparse.Namespace) -> int:
    try:
        spec = build_spec(args)
    except Exception as exc:
        if isinstance(exc, CliError):
            raise
        raise CliError(str(exc), EXIT_USAGE) from exc
    from agent_lib.config import queue_name_problem
    from agent_lib.runners import available_resources

    problem = queue_name_problem(args.queue)
    if problem:
        raise CliError(f"--queue: {problem}", EXIT_USAGE)
    resource = spec.get("resource")
    if resource is not None and resource not in available_resources():
        raise CliError(
            f"resource {resource!r} is not supported (supported: "
            f"{', '.join(available_resources())})",
            EXIT_USAGE,
        )
    priority = parse_priority(args.priority)
    config = load_config(args)
    db = open_any_backend(config)
    # entity/project say where the queue lives (W&B: the entity's project model-registry).
    item_id = db.push_to_run_queue(
        args.queue, spec, priority, args.entity or config.entity, config.project
    )
    db.close()
    emit(
        args,
        {"id": item_id, "queue": args.queue},
        f"pushed item {item_id} to queue {args.queue!r}: {what_runs(spec)}",
    )
    return EXIT_OK


def cmd_queues(args: argparse.Namespace) -> int:
    db = open_queue_db(load_config(args))
    summaries = db.list_queues()
    headers = ["QUEUE", *STATE_COLUMNS]
    rows = [[s.name, *(str(s.counts.get(c, 0)) for c in STATE_COLUMNS)] for s in summaries]
    emit(
        args,
        [{"name": s.name, "counts": s.counts} for s in summaries],
        table(headers, rows) if rows else "no queues yet (push an item to create one)",
    )
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    db = open_queue_db(load_config(args))
    states = [ItemState(s) for s in args.state] if args.state else None
    found = db.list_items(args.queue, states, args.limit)
    rows = []
    for info in found:
        end = info.finished_at or time.time()
        took = duration(end - info.claimed_at) if info.claimed_at else "-"
        note = info_note(info)
        rows.append(
            [
                info.id,
                info.queue,
                info.state.value,
                str(info.priority),
                info.run_id or "-",
                ago(info.created_at),
                took,
                what_runs(info.run_spec)[:40],
                note[:60],
            ]
        )
    headers = ["ID", "QUEUE", "STATE", "PRI", "RUN", "CREATED", "RAN", "WHAT", "FAILURE"]
    emit(args, [item_dict(i) for i in found], table(headers, rows) if rows else "no items")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from agent_lib.backends.base import StopRequest
    from agent_lib.runners.base import read_log_tail

    config = load_config(args)
    db = open_queue_db(config)
    info = get_item_or_fail(db, args.item)
    register_secrets_in(info.run_spec)  # a key the job printed is masked below too
    log_tail = ""
    if info.run_id:
        log_path = job_dir_for(config.jobs_dir, info.id, info.run_id) / "output.log"
        log_tail = read_log_tail(log_path, args.lines)
    if args.json:
        emit(args, {**item_dict(info), "log_tail": redact(log_tail)}, "")
        return EXIT_OK
    lines = [
        f"item {info.id} in queue {info.queue!r}: {info.state.value}",
        f"  what:      {what_runs(info.run_spec)}",
        f"  priority:  {info.priority}   attempts: {info.attempts}",
        f"  run id:    {info.run_id or '-'}   agent: {info.agent_id or '-'}",
        f"  created:   {ago(info.created_at)}   claimed: {ago(info.claimed_at)}"
        f"   ended: {ago(info.finished_at)}",
    ]
    if info.exit_code is not None:
        lines.append(f"  exit code: {info.exit_code}")
    if info.stop_requested_at is not None:
        asked = StopRequest(info.id, info.stop_requested_by, info.stop_requested_at).describe()
        pending = info.state is ItemState.CLAIMED
        lines.append(f"  {asked.replace('stopped', 'stop asked', 1) if pending else asked}")
    if info.failure_message:
        lines.append(redact(f"  {describe_end(info)}"))
    for warning in info.warnings:
        lines.append(redact(f"  warning ({warning.get('stage')}): {warning.get('message')}"))
    for path, content in info.files.items():
        lines.append(f"--- {path} (last {args.lines} lines) ---")
        lines.append(redact("\n".join(content.splitlines()[-args.lines :])))
    if log_tail and not info.files:
        lines.append(f"--- job output (last {args.lines} lines) ---")
        lines.append(redact(log_tail.rstrip("\n")))
    print("\n".join(lines))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    key = item_key(args.item)
    db = open_queue_db(load_config(args))
    state = db.cancel_run_queue_item(key, requester())
    if state is None:
        raise CliError(f"no item {args.item!r}", EXIT_NOT_FOUND)
    if state is ItemState.STOPPED:
        text = f"item {args.item} stopped"
    elif state is ItemState.CLAIMED:
        text = f"item {args.item} is running: its agent was asked to stop it"
    else:
        text = f"item {args.item} already ended ({state.value})"
    emit(args, {"id": args.item, "state": state.value}, text)
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    db = open_queue_db(load_config(args))
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    while True:
        info = get_item_or_fail(db, args.item)
        if info.state in TERMINAL_ITEM_STATES:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"item {args.item} is still {info.state.value} after {args.timeout}s")
        time.sleep(0.2)
    text = f"item {info.id}: {info.state.value}"
    if info.failure_message:
        text += f", {describe_end(info)}"
    emit(args, item_dict(info), text)
    return EXIT_OK if info.state is ItemState.FINISHED else EXIT_FAILED


def cmd_agents(args: argparse.Namespace) -> int:
    db = open_queue_db(load_config(args))
    found = db.list_agents()
    rows = [
        [
            a.name,
            a.id,
            a.status,
            ",".join(a.queues),
            ago(a.heartbeat_at),
            "yes" if a.stop_polling else "",
        ]
        for a in found
    ]
    headers = ["NAME", "ID", "STATUS", "QUEUES", "HEARTBEAT", "STOP ASKED"]
    emit(args, [vars(a) for a in found], table(headers, rows) if rows else "no agents yet")
    return EXIT_OK


def cmd_stop_agent(args: argparse.Namespace) -> int:
    db = open_queue_db(load_config(args))
    if not db.stop_agent(args.agent):
        raise CliError(f"no agent {args.agent!r}", EXIT_NOT_FOUND)
    emit(
        args,
        {"agent": args.agent, "stop_polling": True},
        f"agent {args.agent} asked to stop (it finishes its running jobs first)",
    )
    return EXIT_OK


if __name__ == "__main__":
    # `python -m agent_lib.cli` runs this file as `__main__`; the sweep commands import
    # `agent_lib.cli`, a second copy with its own CliError. Hand over to that one copy.
    from agent_lib.cli import main as module_main

    sys.exit(module_main())
