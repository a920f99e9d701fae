"""Wake-up: pushes are announced to idle agents (PostgreSQL NOTIFY, SQLite datagrams)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.backends.sqlite_wake import LocalListener, LocalWaker, wake_dir_for
from agent_lib.states import ItemState
from tests.helpers import sh_job, start_agent_process, wait_for


def test_wait_for_items_wakes_on_push_to_its_queue(db_url: str, open_db: object) -> None:
    listener: SqlBackend = open_db()  # type: ignore[operator]
    pusher: SqlBackend = open_db(listen=False)  # type: ignore[operator]
    assert listener.supports_wakeup
    listener.wait_for_items(["q"], 0.1)  # PostgreSQL's first call connects: "look once"
    assert listener.wait_for_items(["q"], 0.2) is False
    pusher.push_to_run_queue("other", {})
    assert listener.wait_for_items(["q"], 0.3) is False  # not our queue
    timer = threading.Timer(0.3, lambda: pusher.push_to_run_queue("q", {}))
    timer.start()
    started = time.monotonic()
    assert listener.wait_for_items(["q"], 20.0) is True
    assert time.monotonic() - started < 15.0  # woken by the push, not the timeout
    timer.join()


def test_listen_can_be_turned_off(db_url: str, open_db: object) -> None:
    db: SqlBackend = open_db(listen=False)  # type: ignore[operator]
    assert not db.supports_wakeup and db.wait_for_items(["q"], 0.1) is False


def test_an_in_memory_sqlite_database_has_no_wake_up() -> None:
    assert wake_dir_for(":memory:") is None and wake_dir_for(None) is None
    db = SqlBackend("sqlite://")
    try:
        assert not db.supports_wakeup and db.wait_for_items(["q"], 0.05) is False
    finally:
        db.close()


def test_a_rolled_back_push_wakes_nobody(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    listener, pusher = SqlBackend(url), SqlBackend(url, listen=False)
    try:
        with pytest.raises(RuntimeError), pusher._tx() as conn:
            pusher._notify(conn, "q")
            raise RuntimeError("the transaction fails")
        assert listener.wait_for_items(["q"], 0.2) is False
        with pusher._tx() as conn:  # the next transaction announces only its own queues
            pusher._notify(conn, "other")
        assert listener.wait_for_items(["q"], 0.2) is False
    finally:
        listener.close()
        pusher.close()


def test_sockets_of_gone_agents_are_removed_and_long_paths_work(tmp_path: Path) -> None:
    folder = tmp_path / ("deep-" * 30) / "queue.db-wake"  # past AF_UNIX's 108 bytes
    listener = LocalListener(folder)
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale = folder / "gone.sock"
    with contextlib.chdir(folder):  # bind a short relative path: a dead agent's socket
        gone.bind("gone.sock")
    gone.close()
    assert stale.exists()
    LocalWaker(folder).announce({"q"})
    assert listener.wait(["q"], 1.0) is True
    assert not stale.exists()
    listener.close()
    assert not any(folder.iterdir())  # a closed listener leaves no socket behind


def test_an_idle_agent_starts_a_pushed_job_long_before_its_next_poll(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    pusher = SqlBackend(url, listen=False)
    # The agent looks once at start, then would not look again for an hour.
    agent = start_agent_process(url, tmp_path / "data", "-q", "q", poll_interval="3600")
    try:
        wait_for(lambda: pusher.list_agents(), 60, what="the agent to start")
        item = pusher.push_to_run_queue("q", sh_job("true"))
        wait_for(
            lambda: (
                (info := pusher.get_item(item)) is not None and info.state is ItemState.FINISHED
            ),
            60,
            what="the job to be woken up, run and finished",
        )
    finally:
        agent.terminate()
        agent.wait(30)
        pusher.close()
