"""The wire format: our test schema is the reference's, and our documents are W&B's."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import (
    DocumentNode,
    FieldNode,
    OperationDefinitionNode,
    build_schema,
    parse,
    print_ast,
    validate,
)

from agent_lib.backends import wandb_ops
from tests.wandb.server import PART_A, PART_B, SCHEMA, schema_sdl

# A copy of shared/reference/wandb-launch-schema-excerpt.graphql, kept in the repo so these
# checks run everywhere (CI's fresh clone included).
REFERENCE = Path(__file__).with_name("reference-excerpt.graphql")
# Ours and W&B's (see wandb_ops' docstring), or PART B's with the optional variables left out.
NOT_IN_PART_B = {"ProjectRunQueues", "SweepIdAndState"}
PUSH_VARIANTS = {"pushToRunQueueByName", "pushToRunQueueByName+priority"}


def reference_text() -> str:
    return REFERENCE.read_text()


def part_b_operations() -> dict[str, OperationDefinitionNode]:
    text = reference_text()
    document = parse(text[text.index(PART_B) :])
    return {
        d.name.value: d
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode) and d.name is not None
    }


def only_operation(document: DocumentNode) -> OperationDefinitionNode:
    (operation,) = document.definitions
    assert isinstance(operation, OperationDefinitionNode)
    return operation


def test_schema_is_the_reference_part_a_plus_additions() -> None:
    sdl = schema_sdl()
    build_schema(sdl)
    text = reference_text()
    assert text[text.index(PART_A) : text.index(PART_B)] in sdl


def test_every_part_b_document_validates_against_the_schema() -> None:
    operations = part_b_operations()
    assert len(operations) >= 20
    for name, operation in operations.items():
        errors = validate(SCHEMA, DocumentNode(definitions=(operation,)))
        assert not errors, f"{name}: {errors}"


@pytest.mark.parametrize("key", sorted(wandb_ops.ALL))
def test_every_document_we_send_validates(key: str) -> None:
    errors = validate(SCHEMA, parse(wandb_ops.ALL[key]))
    assert not errors, f"{key}: {errors}"


@pytest.mark.parametrize("key", sorted(set(wandb_ops.ALL) - NOT_IN_PART_B - PUSH_VARIANTS))
def test_documents_from_part_b_are_part_b_verbatim(key: str) -> None:
    ours = only_operation(parse(wandb_ops.ALL[key]))
    assert print_ast(ours) == print_ast(part_b_operations()[key])


def test_push_documents_are_part_b_without_the_unset_optional_variables() -> None:
    reference = part_b_operations()["pushToRunQueueByName"]
    declared = {v.variable.name.value for v in reference.variable_definitions}
    for key in PUSH_VARIANTS:
        ours = only_operation(parse(wandb_ops.ALL[key]))
        assert {v.variable.name.value for v in ours.variable_definitions} <= declared
        assert answer_fields(ours) == answer_fields(reference)


def answer_fields(operation: OperationDefinitionNode) -> str:
    """What the operation asks back: the selection of its (only) root field."""
    (root,) = operation.selection_set.selections
    assert isinstance(root, FieldNode) and root.selection_set is not None
    return print_ast(root.selection_set)
