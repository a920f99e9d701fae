"""Test-side access to real services: skip with a reason when absent, fail under CI.

`LAUNCH_AGENT_REQUIRE_SERVICES=1` (set by .ci/run after provisioning) turns every
"service missing" skip into a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import os

import pytest


def services_required() -> bool:
    return os.environ.get("LAUNCH_AGENT_REQUIRE_SERVICES") == "1"


def missing_service(reason: str) -> None:
    """Skip the test (newcomer's machine) or fail it (CI), saying what is missing."""
    if services_required():
        pytest.fail(f"required service missing: {reason}", pytrace=False)
    pytest.skip(reason=f'{reason} (run `eval "$(scripts/services)"` to provision)')
