"""Keeps secrets out of logs, failure messages and saved files.

Two nets: known secret values (API keys, database passwords) are replaced wherever they
appear, and keys that name a secret (`*api_key*`, `*token*`, ...) are masked in specs.
Installed once on Python's log record factory, so every logger is covered, Prefect's too.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 6
MAX_SHOWN_DEPTH = 32
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.I)

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_installed = False


def register_secret(value: str | None) -> None:
    """Remember a value that must never be shown. Short values are ignored (too many hits)."""
    global _pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def redact_mapping(data: Any) -> Any:
    """A copy of a JSON-like value with secret-named keys masked and secret values replaced.

    Values under secret-named keys are registered first, so the same secret is masked
    wherever else it appears in `data` (a command line that embeds it, say).
    """
    register_secrets_in(data)
    return _masked(data)


def _masked(data: Any, depth: int = 0) -> Any:
    if depth > MAX_SHOWN_DEPTH:
        return "<nested too deeply to show>"
    if isinstance(data, dict):
        return {
            k: (MASK if _SECRET_KEY.search(str(k)) and v else _masked(v, depth + 1))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [_masked(v, depth + 1) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data


def register_secrets_in(data: Any) -> None:
    """Register every value held under a secret-named key of a JSON-like value, whatever
    its type (a key given as a list or a number is still a key). Iterative: a hostile,
    deeply nested spec cannot make it recurse."""
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        value, secret = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, secret or bool(_SECRET_KEY.search(str(k)))) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, secret) for v in value)
        elif secret and value is not None and not isinstance(value, bool):
            register_secret(str(value))


def install_log_redaction() -> None:
    """Redact every log record at creation, whichever handler later writes it."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _pattern is not None:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):
                return record
            record.msg = redact(message)
            record.args = None
        return record

    logging.setLogRecordFactory(factory)
