"""The HTTP side: retries with backoff and Retry-After, and errors that say what to do."""

from __future__ import annotations

import time

import pytest

from agent_lib.backends.wandb import WandbBackend
from agent_lib.backends.wandb_client import WandbAuthError, WandbUnavailableError
from agent_lib.errors import BackendError, TransientError
from tests.wandb.conftest import API_KEY, CLIENT_OPTIONS, ENTITY
from tests.wandb.jobs import py_spec
from tests.wandb.server import FakeWandb


def pop(backend: WandbBackend) -> str | None:
    item = backend.pop_from_run_queue("default", ENTITY, "model-registry", "agent-x")
    return item.item_id if item else None


def test_429_is_retried_after_the_servers_retry_after(
    server: FakeWandb, backend: WandbBackend
) -> None:
    item_id = server.push("default", py_spec("pass"))
    server.inject("429", operation="popFromRunQueue", retry_after="1")

    started = time.monotonic()
    assert pop(backend) == item_id
    assert time.monotonic() - started >= 0.95  # waited what the server asked, not 0.01 s
    assert [c.fault for c in server.calls] == ["429", None]


def test_503s_are_retried_with_backoff(server: FakeWandb, backend: WandbBackend) -> None:
    item_id = server.push("default", py_spec("pass"))
    server.inject("503", times=2)

    assert pop(backend) == item_id
    assert [c.fault for c in server.calls] == ["503", "503", None]
    assert server.item(item_id)["state"] == "LEASED"  # popped once, not lost


def test_a_dropped_connection_is_retried(server: FakeWandb, backend: WandbBackend) -> None:
    item_id = server.push("default", py_spec("pass"))
    server.inject("drop", operation="popFromRunQueue")

    assert pop(backend) == item_id
    assert [c.fault for c in server.calls] == ["drop", None]


def test_a_refused_connection_is_retried_then_reported_as_transient() -> None:
    backend = WandbBackend("http://127.0.0.1:9", API_KEY, **CLIENT_OPTIONS)
    with pytest.raises(WandbUnavailableError) as err:
        pop(backend)
    assert isinstance(err.value, TransientError) and isinstance(err.value, BackendError)
    assert "after 4 attempts" in str(err.value)


def test_giving_up_after_the_last_retry(server: FakeWandb, backend: WandbBackend) -> None:
    server.inject("503", times=10)
    with pytest.raises(WandbUnavailableError, match=r"HTTP 503\) after 4 attempts"):
        pop(backend)
    assert len(server.calls) == 4


def test_401_says_what_to_do_and_is_not_retried(server: FakeWandb) -> None:
    wrong_key = "wk-wrong-key-00000000000000000000"
    backend = WandbBackend(server.base_url, wrong_key, **CLIENT_OPTIONS)

    with pytest.raises(WandbAuthError) as err:
        pop(backend)

    message = str(err.value)
    assert "refused the API key (HTTP 401)" in message
    assert "WANDB_API_KEY" in message and "wandb login" in message
    assert wrong_key not in message
    assert len(server.calls) == 1
    backend.close()


def test_403_names_access_as_the_problem(server: FakeWandb, backend: WandbBackend) -> None:
    server.inject("403")
    with pytest.raises(WandbAuthError, match=r"denied popFromRunQueue \(HTTP 403\)"):
        pop(backend)
    assert len(server.calls) == 1


def test_404_points_at_the_base_url(server: FakeWandb) -> None:
    backend = WandbBackend(server.base_url + "/api/v1", **CLIENT_OPTIONS)
    with pytest.raises(BackendError, match=r"does not exist \(HTTP 404\).*WANDB_BASE_URL"):
        pop(backend)
    backend.close()


def test_pushing_to_a_missing_queue_says_so(server: FakeWandb, backend: WandbBackend) -> None:
    with pytest.raises(BackendError, match="check that the queue exists"):
        backend.push_to_run_queue("nope", py_spec("pass"), entity=ENTITY)


def test_requests_use_basic_auth_and_one_kept_alive_connection(
    server: FakeWandb, backend: WandbBackend
) -> None:
    for _ in range(3):
        pop(backend)
    assert all(c.status == 200 for c in server.calls)  # the server checked `api:<key>`
    assert len(server.client_ports) == 1  # every call came over the same kept-alive connection


def test_an_idle_queue_is_not_asked_more_than_once_a_second(server: FakeWandb) -> None:
    backend = WandbBackend(server.base_url, **CLIENT_OPTIONS)
    for _ in range(20):
        assert pop(backend) is None
    assert server.operations() == ["popFromRunQueue"]
    backend.close()
