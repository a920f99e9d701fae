"""How a sweep's run reports its metric: read from the run's job folder, unchanged jobs.

Looked for, in this order, in `<jobs_dir>/<item>-<run>/`:

1. W&B: a job that calls `wandb.init` (online or `mode="offline"`) and `wandb.log` writes
   its run under its working directory: `work/wandb/[offline-]run-*-<run id>/`. Its
   `run-<run id>.wandb` file (W&B's record log, read with the SDK's protobuf classes) gives
   each `wandb.log` step (history) and the run's summary; `files/wandb-summary.json` is read
   when there is no record file. The metric is the summary's value (the last logged, unless
   the job set `wandb.summary` itself), the steps its history (`_step`).
2. Plain jobs: one JSON object per line, on standard output (the job's `output.log`) or in
   `metrics.jsonl` in its working directory, e.g. `{"loss": 0.25, "_step": 3}`. Lines
   that are not JSON objects holding the metric are ignored. `_step` (or `step`) gives the
   step; without it, the metric's lines count 0, 1, 2, ... The last value is the metric.

Values are read incrementally: each poll reads only what was appended since the last.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WANDB_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
BLOCK = 32768  # W&B's record log uses LevelDB's log framing: 32 KiB blocks
FRAME = 7  # crc32c (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class Metrics:
    """What a run reported so far: values by step, and its final (summary) value."""

    steps: dict[int, float] = field(default_factory=dict)
    summary: float | None = None

    @property
    def value(self) -> float | None:
        if self.summary is not None:
            return self.summary
        if not self.steps:
            return None
        return self.steps[max(self.steps)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _lookup(data: dict[str, Any], name: str) -> Any:
    if name in data:
        return data[name]
    node: Any = data
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class _JsonLines:
    """A growing file of JSON lines, read from where the last read stopped."""

    def __init__(self, path: Path, metric: str) -> None:
        self.path = path
        self.metric = metric
        self.offset = 0
        self.count = 0

    def read(self, into: Metrics) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for raw in data[: end + 1].splitlines():
            line = raw.strip()
            if not line.startswith(b"{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            value = _number(_lookup(record, self.metric))
            if value is None:
                continue
            step = record.get("_step", record.get("step"))
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                step = self.count
            self.count += 1
            into.steps[step] = value


class _WandbRecords:
    """A W&B run's `.wandb` record log, parsed record by record as it grows."""

    def __init__(self, path: Path, metric: str) -> None:
        self.path = path
        self.metric = metric
        self.offset = WANDB_HEADER
        self.ok = True

    def read(self, into: Metrics) -> None:
        if not self.ok:
            return
        try:
            data = self.path.read_bytes()
        except OSError:
            return
        if self.offset == WANDB_HEADER and data[:4] != b":W&B":
            if len(data) >= WANDB_HEADER:
                self.ok = False
            return
        from wandb.proto import wandb_internal_pb2  # the SDK's own record format

        pos, pending = self.offset, b""
        while True:
            if BLOCK - pos % BLOCK < FRAME:
                pos += BLOCK - pos % BLOCK  # a block's tail too short for a frame: padding
            if pos + FRAME > len(data):
                return
            _, length, kind = struct.unpack("<IHB", data[pos : pos + FRAME])
            if pos + FRAME + length > len(data):
                return  # still being written
            chunk = data[pos + FRAME : pos + FRAME + length]
            pos += FRAME + length
            if kind == 0:
                continue
            pending = chunk if kind in (FULL, FIRST) else pending + chunk
            if kind not in (FULL, LAST):
                continue
            self.offset = pos  # only whole records move the offset
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            try:
                record.ParseFromString(pending)
            except Exception:
                continue
            self._take(record, into)

    def _take(self, record: Any, into: Metrics) -> None:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            values = {_key(i): i.value_json for i in record.history.item}
            value = _json_number(values.get(self.metric))
            if value is not None:
                step = int(record.history.step.num) if record.history.HasField("step") else None
                if step is None:
                    step = _int(_json_number(values.get("_step")), len(into.steps))
                into.steps[step] = value
        elif kind == "summary":
            for item in record.summary.update:
                if _key(item) == self.metric:
                    value = _json_number(item.value_json)
                    if value is not None:
                        into.summary = value


def _key(item: Any) -> str:
    return str(item.key) if item.key else ".".join(item.nested_key)


def _json_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return _number(json.loads(text))
    except ValueError:
        return None


def _int(value: float | None, default: int) -> int:
    return int(value) if value is not None else default


class RunMetrics:
    """Reads one run's metric from its job folder (see the module docstring)."""

    def __init__(self, job_dir: Path, run_id: str, metric: str) -> None:
        self.job_dir = job_dir
        self.run_id = run_id
        self.metric = metric
        self.metrics = Metrics()
        self._plain = [
            _JsonLines(job_dir / "output.log", metric),
            _JsonLines(job_dir / "work" / "metrics.jsonl", metric),
        ]
        self._wandb: _WandbRecords | None = None

    def read(self) -> Metrics:
        """Read what was added since the last call; returns everything read so far."""
        wandb = self._wandb or self._find_wandb()
        if wandb is not None:
            wandb.read(self.metrics)
        else:
            for source in self._plain:
                source.read(self.metrics)
        if self.metrics.summary is None and self._wandb is None:
            self._summary_json()  # an online run's summary file, if there is one
        return self.metrics

    def _run_dirs(self) -> list[Path]:
        root = self.job_dir / "work" / "wandb"
        if not root.is_dir():
            return []
        pattern = f"*run-*-{self.run_id}"
        return sorted(p for p in root.glob(pattern) if p.is_dir())

    def _find_wandb(self) -> _WandbRecords | None:
        for folder in reversed(self._run_dirs()):
            path = folder / f"run-{self.run_id}.wandb"
            if path.exists():
                self._wandb = _WandbRecords(path, self.metric)
                return self._wandb
        return None

    def _summary_json(self) -> None:
        for folder in reversed(self._run_dirs()):
            try:
                data = json.loads((folder / "files" / "wandb-summary.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                value = _number(_lookup(data, self.metric))
                if value is not None:
                    self.metrics.summary = value
                    return
