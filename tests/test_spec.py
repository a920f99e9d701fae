"""The launch spec model: W&B's keys, unknown keys kept, bad input named precisely."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_lib.errors import SpecError
from agent_lib.spec import LaunchSpec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
spec_keys = st.sampled_from(
    [
        "job",
        "docker",
        "image_uri",
        "resource",
        "resource_args",
        "overrides",
        "sweep_id",
        "run_id",
        "_resume_count",
        "_wandb_api_key",
        "builder",
        "x-custom",
    ]
)


def test_wandb_spec_round_trips_with_unknown_keys() -> None:
    raw: dict[str, Any] = {
        "job": "entity/project/job-train:v3",
        "docker": {"docker_image": "trainer:1", "future_key": True},
        "entity": "team",
        "project": "proj",
        "resource": "local-container",
        "resource_args": {"local-container": {"memory": "2g"}},
        "overrides": {"args": ["--lr", "0.1"], "run_config": {"lr": 0.1}, "entry_point": None},
        "_resume_count": 2,
        "_wandb_api_key": "k" * 40,
        "template_variables": {"gpus": 2},
    }
    spec = LaunchSpec.parse(raw)
    assert spec.image == "trainer:1"
    assert spec.resume_count == 2
    wire = spec.to_wire()
    assert wire["template_variables"] == {"gpus": 2}
    assert wire["docker"]["future_key"] is True
    assert wire["_resume_count"] == 2
    assert wire["_wandb_api_key"] == "k" * 40


def test_args_as_a_mapping_become_flags() -> None:
    spec = LaunchSpec.parse({"overrides": {"args": {"lr": 0.1, "verbose": None}}})
    assert spec.overrides.args == ["--lr", "0.1", "--verbose"]


def test_image_uri_is_the_fallback_image() -> None:
    assert LaunchSpec.parse({"image_uri": "img:2"}).image == "img:2"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"overrides": {"entry_point": "python train.py"}}, "overrides.entry_point"),
        ({"resource_args": {"local-container": 3}}, "resource_args.local-container"),
        ({"docker": "img"}, "docker"),
        ({"_resume_count": "twice"}, "_resume_count"),
    ],
)
def test_bad_fields_are_named(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError, match=f"invalid launch spec: {fragment}"):
        LaunchSpec.parse(raw)


def test_scheduler_detection_follows_wandb() -> None:
    assert LaunchSpec.parse({"uri": "placeholder-uri-scheduler", "job": "j"}).is_scheduler
    cli_style = {
        "uri": "placeholder-uri-scheduler",
        "resource": "local-process",
        "overrides": {"entry_point": ["wandb", "scheduler", "sweep1"]},
    }
    assert LaunchSpec.parse(cli_style).is_scheduler
    cli_style["overrides"] = {"entry_point": ["python", "x.py"]}
    assert not LaunchSpec.parse(cli_style).is_scheduler
    assert not LaunchSpec.parse({"job": "j"}).is_scheduler


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(spec_keys, json_values, max_size=6))
def test_any_json_object_parses_or_fails_with_spec_error(raw: dict[str, Any]) -> None:
    try:
        spec = LaunchSpec.parse(raw)
    except SpecError as exc:
        assert str(exc).startswith("invalid launch spec: ")
    else:
        assert isinstance(spec.to_wire(), dict)
