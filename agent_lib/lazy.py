"""Package exports imported on first use, so importing a package costs only its light parts.

`launch-agent --help` and `push` import `agent_lib`, `agent_lib.backends` and
`agent_lib.runners`; the agent, SQLAlchemy's backend, pydantic's models, the runners and
the W&B client load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each name in `exports` (name -> module) is
    imported from its module when first asked for, then kept in the package."""

    def __getattr__(name: str) -> Any:
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
