"""YAML (and so JSON) text to Python values, with PyYAML imported only when text comes.

The CLI's `--help` and a `push` without a spec file or `--set` never read YAML, and
PyYAML's import is a noticeable part of their start-up.
"""

from __future__ import annotations

from typing import Any


def load_yaml(text: str) -> Any:
    """`yaml.safe_load(text)`; a ValueError with PyYAML's message if it is not YAML."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc
