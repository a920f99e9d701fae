"""A small GraphQL client for W&B: one shared session, retries, errors that say what to do.

Retries (with exponential backoff, or the server's `Retry-After`) cover what a busy or
restarting server does: refused or dropped connections, timeouts, 429 and 5xx. Like W&B's
own client it retries mutations too; a pop whose answer was lost leaves the item LEASED
until W&B's lease expires and returns it to the queue, so nothing is launched twice.
Auth, permission and not-found answers are not retried: they need a person.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

import requests

from agent_lib import __version__
from agent_lib.errors import BackendError, TransientError, WandbAuthError
from agent_lib.redact import register_secret

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
DEFAULT_RETRIES = 6
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class WandbUnavailableError(BackendError, TransientError):
    """W&B did not answer after every retry; worth trying again later."""


class WandbClient:
    """Sends GraphQL operations to `<base_url>/graphql` with HTTP basic auth `api:<key>`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_RETRIES,
        backoff_base: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        register_secret(api_key)
        self.base_url = base_url
        self.url = f"{base_url}/graphql"
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff
        self._session = requests.Session()
        self._session.auth = ("api", api_key)
        self._session.headers["User-Agent"] = f"launch-agent/{__version__}"

    def close(self) -> None:
        self._session.close()

    def execute(self, operation: str, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Run one operation and return its `data`; BackendError (or a subclass) if not."""
        started = time.monotonic()
        response = self._post_with_retries(operation, document, variables)
        data = self._data_of(operation, response)
        log.debug("W&B %s: %.0f ms", operation, (time.monotonic() - started) * 1000)
        return data

    # -- sending --
    def _post_with_retries(
        self, operation: str, document: str, variables: dict[str, Any]
    ) -> requests.Response:
        body = {"query": document, "variables": variables, "operationName": operation}
        attempt = 0
        while True:
            attempt += 1
            delay: float | None = None
            try:
                response = self._session.post(self.url, json=body, timeout=self._timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}: the connection failed or timed out"
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                problem = f"HTTP {response.status_code}"
                delay = retry_after(response)
            if attempt > self._max_retries:
                raise WandbUnavailableError(
                    f"W&B at {self.base_url} did not answer {operation} ({problem}) after "
                    f"{attempt} attempts; check the server's status and WANDB_BASE_URL"
                )
            wait = min(self._max_backoff, delay if delay is not None else self._backoff(attempt))
            log.warning(
                "W&B %s: %s; retry %d/%d in %.1fs",
                operation,
                problem,
                attempt,
                self._max_retries,
                wait,
            )
            time.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._max_backoff, self._backoff_base * 2 ** (attempt - 1)))

    # -- reading the answer --
    def _data_of(self, operation: str, response: requests.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 401:
            raise WandbAuthError(
                f"W&B at {self.base_url} refused the API key (HTTP 401) on {operation}: set "
                "WANDB_API_KEY to a valid key (find yours at <server>/authorize) or run "
                "`wandb login --relogin`"
            )
        if status == 403:
            raise WandbAuthError(
                f"W&B at {self.base_url} denied {operation} (HTTP 403): the API key's user "
                f"has no access; check the entity and that the user belongs to it"
                f"{_error_suffix(response)}"
            )
        if status == 404:
            raise BackendError(
                f"{self.url} does not exist (HTTP 404) for {operation}: WANDB_BASE_URL (or "
                "the backend URL wandb+https://HOST) must be the server's base URL, "
                "e.g. https://api.wandb.ai"
            )
        payload = _json_or_none(response)
        if payload is None:
            raise BackendError(
                f"W&B at {self.base_url} answered {operation} with HTTP {status} and no "
                "GraphQL JSON: is WANDB_BASE_URL a W&B server?"
            )
        errors = payload.get("errors")
        if errors or status >= 400:
            raise BackendError(f"W&B rejected {operation}: {_messages(errors, status)}")
        data = payload.get("data")
        if not isinstance(data, dict):
            raise BackendError(f"W&B answered {operation} without data")
        return data


def retry_after(response: requests.Response) -> float | None:
    """The server's `Retry-After` in seconds (a number or an HTTP date), if it sent one."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json_or_none(response: requests.Response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _messages(errors: Any, status: int) -> str:
    if isinstance(errors, list) and errors:
        texts = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors]
        return "; ".join(texts)
    return f"HTTP {status}"


def _error_suffix(response: requests.Response) -> str:
    payload = _json_or_none(response)
    if payload is None or not payload.get("errors"):
        return ""
    return f" ({_messages(payload['errors'], response.status_code)})"
