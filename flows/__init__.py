"""Prefect flows around agent_lib: the agent as a flow run, each job as a subflow run.

`launch_agent` (long-lived) and `drain` (until the queues are empty) run
`agent_lib.LaunchAgent` with `PrefectHooks`; nothing of the engine is re-implemented here.
`submit` pushes one job to a queue, from the UI's Run form.
"""

from flows.agent_flow import drain, launch_agent
from flows.hooks import PrefectHooks
from flows.job_flow import task_run_job
from flows.submit import submit

__all__ = ["PrefectHooks", "drain", "launch_agent", "submit", "task_run_job"]
