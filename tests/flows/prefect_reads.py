"""Read back what a person would see in the Prefect UI, through the Prefect client."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, Log, TaskRun
from prefect.client.schemas.sorting import FlowRunSort, LogSort, TaskRunSort

LIMIT = 200


async def subflow_runs(parent_id: UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            ),
            sort=FlowRunSort.ID_DESC,
            limit=LIMIT,
            offset=0,
        )


async def task_runs_of(flow_run_id: UUID) -> list[TaskRun]:
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.ID_DESC,
            limit=LIMIT,
            offset=0,
        )


async def logs_of(flow_run_id: UUID) -> list[Log]:
    async with get_client() as client:
        return await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            sort=LogSort.TIMESTAMP_ASC,
            limit=LIMIT,
            offset=0,
        )


async def _filter_artifacts(artifacts: dict[str, Any]) -> list[Artifact]:
    """POST /artifacts/filter directly: 3.8's client sends empty run filters that match nothing."""
    body = {"artifacts": artifacts, "limit": LIMIT, "offset": 0, "sort": "UPDATED_DESC"}
    async with get_client() as client:
        response = await client._client.post("/artifacts/filter", json=body)
    response.raise_for_status()
    return [Artifact.model_validate(a) for a in response.json()]


async def artifacts_of(flow_run_id: UUID) -> list[Artifact]:
    return await _filter_artifacts({"flow_run_id": {"any_": [str(flow_run_id)]}})


async def artifacts_keyed(key: str) -> list[Artifact]:
    return await _filter_artifacts({"key": {"any_": [key]}})
