"""Arbitrary JSON pushed as queue items: the agent stays up, every item ends, no item that
secure mode refuses runs, and no failure message is empty (a property test, hypothesis)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_lib import AgentConfig, LaunchAgent
from agent_lib.backends import open_backend
from agent_lib.errors import SpecError
from agent_lib.job import check_secure
from agent_lib.spec import LaunchSpec
from agent_lib.states import TERMINAL_ITEM_STATES, ItemState
from tests.helpers import FAST, PYTHON
from tests.test_spec_limits import specs

LEDGER_CODE = (
    "import os, sys; open(sys.argv[1], 'a').write(os.environ['WANDB_LAUNCH_TRACE_ID'] + '\\n')"
)


def allowed(raw: Any, config: AgentConfig) -> bool:
    """Whether secure mode lets this item run at all."""
    try:
        spec = LaunchSpec.parse(raw)
        check_secure(spec, config)
    except SpecError:
        return False
    return True


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(specs, min_size=4, max_size=12))
def test_arbitrary_items_never_stall_the_agent_or_run_when_refused(
    tmp_path_factory: Any, items: list[Any]
) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    ledger = tmp / "ledger"
    backend = open_backend(f"sqlite:///{tmp / 'queue.db'}")
    jobs = {"ok": {"entry_point": [PYTHON, "-c", LEDGER_CODE, str(ledger)], "allow_args": False}}
    config = AgentConfig.load(
        None, data_dir=tmp, secure_mode=True, jobs=jobs, exit_when_idle=True, max_jobs=4, **FAST
    )
    pushed: dict[str, Any] = {}
    for raw in [*items, {"job": "ok"}]:
        try:
            pushed[backend.push_to_run_queue("default", raw)] = raw
        except Exception:  # not even storable (e.g. nested past the JSON encoder's limit)
            continue
    try:
        agent = LaunchAgent(backend, config)
        asyncio.run(asyncio.wait_for(agent.loop(), 120))
        ran = set(ledger.read_text().split()) if ledger.exists() else set()
        for item_id, raw in pushed.items():
            info = backend.get_item(item_id)
            assert info is not None and info.state in TERMINAL_ITEM_STATES, info
            if info.state is ItemState.FAILED:
                assert (info.failure_message or "").strip(), info
            if item_id in ran:
                assert allowed(raw, config), f"item {item_id} ran although refused: {raw!r}"
        assert ran, "the valid named job ran"
    finally:
        backend.close()


def test_the_ledger_job_is_what_the_property_counts(tmp_path: Path) -> None:
    """Guard for the test above: a plain allowed item does reach the ledger."""
    config = AgentConfig.load(
        None, data_dir=tmp_path, secure_mode=True, jobs={"ok": {"entry_point": ["x"]}}
    )
    assert allowed({"job": "ok"}, config)
    assert not allowed({"overrides": {"args": ["sh", "-c", "true"]}}, config)
