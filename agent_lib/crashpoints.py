"""Named points where a test can make the agent die, to prove each crash window is closed.

`LAUNCH_AGENT_CRASH_AT=<point>` makes the agent SIGKILL itself when it reaches that point,
exactly as a power cut or the OOM killer would. Points, in a job's order: `popped` (leased,
not acked), `acked` (claimed, not launched), `launched` (the job runs), `ended` (the job
ended, its item not yet settled), `reporting` (a failure's error.log saved, not yet
reported). Unset in normal use; reading one environment variable is all it costs.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "LAUNCH_AGENT_CRASH_AT"
POINTS = ("popped", "acked", "launched", "ended", "reporting")


def crash_point(name: str) -> None:
    """Die here, with SIGKILL, if the environment names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
