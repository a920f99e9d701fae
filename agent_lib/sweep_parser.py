"""The arguments of `launch-agent sweep ...`: W&B-style sweeps on our own (SQL) queues.

    launch-agent sweep create CONFIG.yaml -q QUEUE [--job NAME | -- COMMAND...]
    launch-agent sweep list
    launch-agent sweep show ID [--json]
    launch-agent sweep pause | resume | stop | cancel ID

The commands' bodies are in sweep_cli.py, imported only when one runs: building the
CLI's parser (every command, `--help` too) must not import the sweeps' dependencies.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_sweep_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `sweep` and its subcommands to the CLI's parser."""
    sweep = sub.add_parser(
        "sweep",
        help="hyperparameter sweeps on your own queues (W&B's sweep config, searched by Optuna)",
        description="Sweeps on the SQL backend: W&B's sweep config format (method grid, random "
        "or bayes; metric; parameters; run_cap; early_terminate hyperband; command), searched "
        "by Optuna, run by a scheduler item that pushes the runs.",
    )
    verbs = sweep.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND", required=True)
    # The options alone: what follows CONFIG is parsed again with them (see create_options).
    options = argparse.ArgumentParser(add_help=False, parents=[common], prog="sweep create")
    options.add_argument(
        "-q", "--queue", default="default", help="queue for the scheduler and runs"
    )
    options.add_argument("--job", help="a named job of the agent's config for every run")
    options.add_argument("--resource", help="where runs run (default: the agent's default)")
    options.add_argument("--image", help="docker image of the runs (local-container)")
    options.add_argument("--priority", default=None, help="priority of the runs (see push)")
    options.add_argument("--seed", type=int, help="seed of the search (default: random)")
    create = verbs.add_parser(
        "create",
        parents=[options],
        help="create a sweep from a W&B sweep config and queue its scheduler",
        epilog="example: launch-agent sweep create sweep.yaml -q default -- python train.py",
    )
    create.add_argument("config_file", metavar="CONFIG", help="sweep config, YAML or JSON")
    create.set_defaults(options_parser=options)
    create.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after '--': each run's command; the parameters are appended as --name=value "
        "unless it holds an args macro such as ${args}",
    )
    create.set_defaults(handler=_command("cmd_sweep_create"))

    listing = verbs.add_parser("list", parents=[common], help="list sweeps")
    listing.set_defaults(handler=_command("cmd_sweep_list"))

    show = verbs.add_parser(
        "show", parents=[common], help="a sweep: state, runs, parameters, metric, best run"
    )
    show.add_argument("sweep_id", metavar="ID")
    show.set_defaults(handler=_command("cmd_sweep_show"))

    helps = {
        "pause": "stop asking for new runs (queued and running runs go on)",
        "resume": "ask for runs again (re-queues the scheduler if it ended)",
        "stop": "finish the sweep: no new runs, queued runs dropped, running runs finish",
        "cancel": "cancel the sweep: its queued and running runs are stopped now",
    }
    for verb, text in helps.items():
        parser = verbs.add_parser(verb, parents=[common], help=text)
        parser.add_argument("sweep_id", metavar="ID")
        parser.set_defaults(handler=_command("cmd_sweep_change"), action=verb)


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The sweep_cli command `name`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from agent_lib import sweep_cli

        return int(getattr(sweep_cli, name)(args))

    return run
