"""Hostile launch specs: refused by `LaunchSpec.parse` with the field and the rule named,
never with a raw Python error, and never with a secret in the message."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_lib.errors import SpecError
from agent_lib.files import MAX_JOB_DIR_NAME, job_dir_for
from agent_lib.spec import (
    MAX_ARG_STRLEN,
    MAX_ARGV_BYTES,
    MAX_DEPTH,
    MAX_SPEC_BYTES,
    LaunchSpec,
)


def refusal(raw: Any) -> str:
    with pytest.raises(SpecError) as caught:
        LaunchSpec.parse(raw)
    # Nothing chained: a chained error (pydantic's, a codec's) could show input values.
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    return str(caught.value)


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` lists, one inside the other, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# -- depth and size --


def test_depth_at_the_limit_is_accepted() -> None:
    # The spec object is level 1, overrides 2, run_config 3, then the lists.
    spec = LaunchSpec.parse({"overrides": {"run_config": {"a": nested(MAX_DEPTH - 3)}}})
    assert spec.to_wire()["overrides"]["run_config"]["a"] == nested(MAX_DEPTH - 3)


def test_depth_over_the_limit_names_the_field() -> None:
    message = refusal({"overrides": {"run_config": {"a": nested(MAX_DEPTH - 2)}}})
    assert message.startswith("invalid launch spec: overrides.run_config.a.0.")
    assert f"nested deeper than {MAX_DEPTH} levels" in message


def test_nesting_far_past_the_recursion_limit_is_refused_without_recursion() -> None:
    deep = nested(sys.getrecursionlimit() * 20)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # the check must not come near it
    try:
        message = refusal({"builder": {"x": deep}})
    finally:
        sys.setrecursionlimit(old)
    assert message.startswith("invalid launch spec: builder.x.0.0")
    assert "nested deeper than" in message


def test_total_size_limit_names_the_largest_field() -> None:
    message = refusal({"job": "j", "template_variables": {"blob": "x" * MAX_SPEC_BYTES}})
    assert message.startswith("invalid launch spec: (root): the spec is ")
    assert f"over the limit of {MAX_SPEC_BYTES} bytes" in message
    assert "largest field: template_variables" in message


def test_many_small_values_count_toward_the_size() -> None:
    message = refusal({"builder": {"many": list(range(MAX_SPEC_BYTES // 2))}})
    assert "(root): the spec is" in message and "largest field: builder" in message


# -- strings: NUL and lone surrogates --


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"overrides": {"entry_point": ["python", "a\x00b"]}}, "overrides.entry_point.1"),
        ({"overrides": {"args": ["--x", "1", "2", "a\x00"]}}, "overrides.args.3"),
        ({"overrides": {"args": {"lr": "0.1\x00"}}}, "overrides.args.lr"),
        (
            {"resource_args": {"local-process": {"env": {"FOO": "a\x00"}}}},
            "resource_args.local-process.env.FOO",
        ),
        (
            {"resource_args": {"local-process": {"cwd": "/tmp/\x00"}}},
            "resource_args.local-process.cwd",
        ),
        ({"name": "\x00"}, "name"),
        ({"run_id": "ab\x00"}, "run_id"),
        ({"job": "e/p/j\x00:v1"}, "job"),
        ({"project": "p\x00"}, "project"),
        ({"entity": "e\x00"}, "entity"),
        ({"docker": {"docker_image": "img\x00:1"}}, "docker.docker_image"),
        ({"overrides": {"run_config": {"deep": [{"x": "\x00"}]}}}, "overrides.run_config.deep.0.x"),
    ],
)
def test_nul_characters_are_refused_with_the_field(raw: dict[str, Any], path: str) -> None:
    message = refusal(raw)
    assert message.startswith(f"invalid launch spec: {path}: contains a NUL character")
    assert "\x00" not in message


def test_nul_in_a_key_is_refused() -> None:
    message = refusal({"resource_args": {"local-process": {"env": {"A\x00B": "1"}}}})
    assert message.startswith("invalid launch spec: resource_args.local-process.env.'A\\x00B'")
    assert "the key contains a NUL character" in message
    assert "\x00" not in message


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"name": "a\ud800"}, "name"),
        ({"overrides": {"args": ["\udfff"]}}, "overrides.args.0"),
        ({"x-custom": {"note": "fine \udc80 not"}}, "x-custom.note"),
    ],
)
def test_lone_surrogates_are_refused_anywhere(raw: dict[str, Any], path: str) -> None:
    message = refusal(raw)
    assert message.startswith(f"invalid launch spec: {path}: contains a lone surrogate")
    assert "not valid UTF-8" in message
    message.encode("utf-8")  # the message itself can be logged and saved


def test_lone_surrogate_in_a_key_is_refused() -> None:
    message = refusal({"builder": {"\ud800": 1}})
    assert "builder.'\\ud800': the key contains a lone surrogate" in message
    message.encode("utf-8")


# -- run_id and names --


@pytest.mark.parametrize("run_id", ["r" * 400, "../../etc", "a b", "", "run.1", "é"])
def test_bad_run_ids_are_refused(run_id: str) -> None:
    message = refusal({"run_id": run_id})
    assert message.startswith("invalid launch spec: run_id: must be 1 to 64 characters")
    assert len(message) < 200  # a 400-character id is shown truncated


@pytest.mark.parametrize("run_id", ["abcd1234", "Run_2-x", "r" * 64])
def test_good_run_ids_are_kept(run_id: str) -> None:
    assert LaunchSpec.parse({"run_id": run_id}).run_id == run_id


@pytest.mark.parametrize("field", ["name", "project", "entity"])
def test_names_have_a_length_limit(field: str) -> None:
    assert LaunchSpec.parse({field: "n" * 128}).to_wire()[field] == "n" * 128
    message = refusal({field: "n" * 129})
    assert message == f"invalid launch spec: {field}: is 129 characters, over the limit of 128"


def test_job_has_a_length_limit() -> None:
    message = refusal({"job": "j" * 513})
    assert message == "invalid launch spec: job: is 513 characters, over the limit of 512"


@pytest.mark.parametrize("field", ["name", "project", "entity", "job"])
def test_names_refuse_control_characters(field: str) -> None:
    message = refusal({field: "a\nb"})
    assert message == (
        f"invalid launch spec: {field}: contains a control character (U+000A at position 1)"
    )


# -- argv size --


def test_one_argument_over_max_arg_strlen_is_refused() -> None:
    message = refusal({"overrides": {"args": ["--x", "a" * MAX_ARG_STRLEN]}})
    assert message == (
        f"invalid launch spec: overrides.args.1: one argument is {MAX_ARG_STRLEN} bytes, "
        f"over the limit of {MAX_ARG_STRLEN - 1} bytes per argument"
    )


def test_the_whole_command_line_has_a_limit() -> None:
    args = ["a" * 999] * 200  # 200,000 bytes with their NULs
    message = refusal({"overrides": {"entry_point": ["python", "t.py"], "args": args}})
    size = len("python") + 1 + len("t.py") + 1 + 200 * 1000
    assert message == (
        "invalid launch spec: overrides.args: the command line (overrides.entry_point + "
        f"overrides.args) is {size} bytes, over the limit of {MAX_ARGV_BYTES} bytes"
    )


def test_a_command_line_under_the_limit_is_accepted() -> None:
    spec = LaunchSpec.parse({"overrides": {"entry_point": ["python"], "args": ["a" * 100_000]}})
    assert spec.overrides.args == ["a" * 100_000]


def test_a_run_config_too_large_for_one_variable_is_accepted_in_parts() -> None:
    # 180 KB of JSON (\u00e9 each): the job gets it in WANDB_CONFIG_0..n, as from W&B's agent.
    spec = LaunchSpec.parse({"overrides": {"run_config": {"blob": "é" * 30_000}}})
    assert spec.overrides.run_config == {"blob": "é" * 30_000}


def test_run_config_must_stay_within_the_environment() -> None:
    message = refusal({"overrides": {"run_config": {"blob": "é" * 90_000}}})
    assert message.startswith("invalid launch spec: overrides.run_config: is ")
    assert "WANDB_CONFIG" in message


# -- env --


@pytest.mark.parametrize("resource", ["local-process", "local-container"])
@pytest.mark.parametrize("name", ["1X", "A-B", "A=B", "", "A B"])
def test_bad_env_names_in_a_mapping_are_refused(resource: str, name: str) -> None:
    message = refusal({"resource_args": {resource: {"env": {name: "v"}}}})
    assert message.startswith(f"invalid launch spec: resource_args.{resource}.env.")
    assert "is not a valid environment variable name" in message


def test_bad_env_names_in_a_list_are_refused() -> None:
    message = refusal({"resource_args": {"local-process": {"env": ["OK=1", "A-B=2"]}}})
    assert message.startswith(
        "invalid launch spec: resource_args.local-process.env.1: the name ('A-B') is not a valid "
        "environment variable name"
    )


def test_env_entries_without_equals_are_refused_without_showing_them() -> None:
    message = refusal({"resource_args": {"local-container": {"environment": ["hunter2secret"]}}})
    assert message == (
        "invalid launch spec: resource_args.local-container.environment.0: "
        "must be a NAME=value string (it has no '=')"
    )


def test_container_env_spellings_are_checked() -> None:
    message = refusal({"resource_args": {"local-container": {"-e": {"BAD NAME": "1"}}}})
    assert message.startswith("invalid launch spec: resource_args.local-container.-e.'BAD NAME'")


def test_env_values_must_be_strings_numbers_or_booleans() -> None:
    message = refusal({"resource_args": {"local-process": {"env": {"FOO": ["x"]}}}})
    assert message == (
        "invalid launch spec: resource_args.local-process.env.FOO: the value must be a "
        "string, number or boolean, not a list"
    )
    message = refusal({"resource_args": {"local-process": {"env": "FOO=1"}}})
    assert message == (
        "invalid launch spec: resource_args.local-process.env: must be a mapping or a list of "
        "NAME=value strings, not a string"
    )


def test_good_env_is_accepted_in_both_forms() -> None:
    env_map = {"FOO": "1", "_X": 2, "FLAG": True, "RATE": 0.5}
    spec = LaunchSpec.parse({"resource_args": {"local-process": {"env": env_map}}})
    assert spec.args_for("local-process")["env"] == env_map
    env_list = ["FOO=1", "BAR=a=b", "EMPTY="]
    spec = LaunchSpec.parse({"resource_args": {"local-container": {"env": env_list}}})
    assert spec.args_for("local-container")["env"] == env_list


def test_one_env_variable_over_max_arg_strlen_is_refused() -> None:
    message = refusal({"resource_args": {"local-process": {"env": {"BIG": "x" * MAX_ARG_STRLEN}}}})
    assert message.startswith("invalid launch spec: resource_args.local-process.env.BIG: ")
    assert f"over the limit of {MAX_ARG_STRLEN} bytes for one environment variable" in message


# -- paths --


def test_cwd_must_be_a_string() -> None:
    message = refusal({"resource_args": {"local-process": {"cwd": 3}}})
    assert message == (
        "invalid launch spec: resource_args.local-process.cwd: must be a string (a path), "
        "not a number"
    )


def test_cwd_path_components_and_length_have_limits() -> None:
    message = refusal({"resource_args": {"local-process": {"cwd": "/tmp/" + "d" * 300}}})
    assert message == (
        "invalid launch spec: resource_args.local-process.cwd: has a path component of 300 "
        "bytes, over the limit of 255 bytes"
    )
    message = refusal({"resource_args": {"local-process": {"cwd": "/d" * 3000}}})
    assert "cwd: is 6000 bytes, over the limit of 4095 bytes for a path" in message


# -- secrets stay out of messages --


@pytest.mark.parametrize(
    "value", [["sekrit-value-123456"], {"k": "sekrit-value-123456"}, 123456789]
)
def test_api_key_must_be_a_string_and_is_never_shown(value: Any) -> None:
    message = refusal({"_wandb_api_key": value})
    assert message.startswith("invalid launch spec: _wandb_api_key: must be a string, not a ")
    assert "value not shown" in message
    assert "sekrit" not in message and "123456789" not in message


def test_nothing_chains_the_pydantic_error_that_shows_inputs() -> None:
    with pytest.raises(SpecError) as caught:
        LaunchSpec.parse({"overrides": {"args": [{"token": "sekrit-value-123456"}]}})
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert "sekrit" not in str(caught.value)
    assert str(caught.value).startswith("invalid launch spec: overrides.args.0: ")


def test_secret_named_fields_show_no_value_or_position() -> None:
    message = refusal({"_wandb_api_key": "sekrit\x00value"})
    assert message == "invalid launch spec: _wandb_api_key: contains a NUL character (\\x00)"
    message = refusal(
        {"resource_args": {"local-process": {"env": {"MY_TOKEN": "sekrit-value", "X": ["a"]}}}}
    )
    assert "sekrit" not in message


def test_other_values_are_shown_short() -> None:
    message = refusal({"run_id": "x" * 100 + "/"})
    assert "(got '" + "x" * 40 + "'...)" in message
    assert len(message) < 200


def test_many_pydantic_errors_are_summarised() -> None:
    message = refusal({"overrides": {"args": list(range(50))}})
    assert message.count("Input should be a valid string") == 5
    assert message.endswith("(and 45 more)")


# -- job folders --


def test_short_job_dir_names_are_unchanged(tmp_path: Path) -> None:
    assert job_dir_for(tmp_path, "12", "abcd1234") == tmp_path / "12-abcd1234"
    assert job_dir_for(tmp_path, "a/b", "c d") == tmp_path / "a_b-c_d"


@pytest.mark.parametrize(
    ("item_id", "run_id"),
    [("1", "r" * 400), ("i" * 300, "run"), ("é" * 200, "\ud800\x00" * 100), ("x" * 5000, "")],
)
def test_long_job_dir_names_are_shortened_and_usable(
    tmp_path: Path, item_id: str, run_id: str
) -> None:
    folder = job_dir_for(tmp_path, item_id, run_id)
    assert folder.parent == tmp_path
    assert len(folder.name.encode()) <= MAX_JOB_DIR_NAME
    assert folder == job_dir_for(tmp_path, item_id, run_id)  # the same every time
    folder.mkdir()
    folder.with_name(f"{folder.name}.old-1712345678").mkdir()  # room for the moved-aside name


def test_shortened_job_dir_names_stay_distinct(tmp_path: Path) -> None:
    first = job_dir_for(tmp_path, "1", "a" * 300)
    second = job_dir_for(tmp_path, "1", "a" * 299 + "b")
    third = job_dir_for(tmp_path, "1" + "a" * 150, "a" * 150)
    assert len({first, second, third}) == 3


# -- any JSON at all: a LaunchSpec or a SpecError, nothing else --

texts = st.text(alphabet=st.characters(codec=None), max_size=12) | st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "x\udfffy", "FOO=1", "A-B=2", "../..", "é"]
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=25,
)
deep_values = st.builds(nested, st.integers(0, 3000), scalars)
spec_keys = st.sampled_from(
    [
        "job",
        "uri",
        "git",
        "docker",
        "image_uri",
        "entity",
        "project",
        "name",
        "resource",
        "resource_args",
        "overrides",
        "run_id",
        "_resume_count",
        "_wandb_api_key",
        "builder",
        "x-custom",
    ]
)
resource_args = st.dictionaries(
    st.sampled_from(["local-process", "local-container", "other"]),
    st.dictionaries(
        st.sampled_from(["env", "-e", "environment", "cwd", "workdir", "memory"]),
        json_values | st.lists(texts, max_size=3) | st.dictionaries(texts, scalars, max_size=3),
        max_size=3,
    ),
    max_size=2,
)
overrides = st.fixed_dictionaries(
    {},
    optional={
        "args": st.lists(texts, max_size=4) | st.dictionaries(texts, scalars) | json_values,
        "entry_point": st.lists(texts, max_size=3) | json_values,
        "run_config": st.dictionaries(texts, json_values | deep_values, max_size=3),
    },
)
specs = st.dictionaries(spec_keys, json_values | deep_values, max_size=6) | st.builds(
    lambda base, ra, ov: {**base, "resource_args": ra, "overrides": ov},
    st.dictionaries(spec_keys, json_values, max_size=4),
    resource_args,
    overrides,
)


def strings_in(value: Any) -> list[str]:
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs | json_values)
def test_any_json_parses_or_fails_with_a_spec_error(raw: Any) -> None:
    try:
        spec = LaunchSpec.parse(raw)
    except SpecError as exc:
        message = str(exc)
        assert message
        assert "\x00" not in message
        message.encode("utf-8")
        return
    wire = spec.to_wire()
    json.dumps(wire)
    for text in strings_in(wire) + spec.overrides.args + (spec.overrides.entry_point or []):
        assert "\x00" not in text
        text.encode("utf-8")
