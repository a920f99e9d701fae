"""Wake-up: PostgreSQL announces pushes (NOTIFY); SQLite says "poll"."""

from __future__ import annotations

import threading
import time

from agent_lib.backends import SqlBackend


def test_wait_for_items_wakes_on_push_to_its_queue(db_url: str, open_db: object) -> None:
    listener: SqlBackend = open_db()  # type: ignore[operator]
    pusher: SqlBackend = open_db()  # type: ignore[operator]
    if "sqlite" in db_url:
        assert not getattr(listener, "supports_wakeup", False)
        assert listener.wait_for_items(["q"], 5.0) is False
        return
    assert listener.supports_wakeup
    assert listener.wait_for_items(["q"], 0.1) is True  # first connect: "look once"
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
