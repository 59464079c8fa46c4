"""Request checks (transport/requests.py): every bad field named with its exact description, defaults resolved."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import struct_pb2
from pydantic import SecretStr

from facilitair.server.domain import AgentRole, ModelRef
from facilitair.server.errors import InvalidArgument
from facilitair.server.pipeline_file import AgentConfig, PipelineConfig
from facilitair.server.settings import Settings
from facilitair.server.transport.requests import run_id_of, run_spec, run_state_of
from facilitair.v1 import orchestrator_pb2 as pb

MINI = ModelRef("openai", "gpt-4.1-mini")
SONNET = ModelRef("anthropic", "claude-sonnet-4-6")


def settings(**fields: Any) -> Settings:
    """Server settings with an OpenAI key and gpt-4.1-mini as the default model."""
    return Settings(openai_api_key=SecretStr("sk-test"), model="openai:gpt-4.1-mini", **fields)


def nested(depth: int) -> dict[str, Any]:
    """A context `depth` objects deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"in": value}
    return value


def context(data: dict[str, Any]) -> struct_pb2.Struct:
    """A request context."""
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def request(**fields: Any) -> pb.CollaborateRequest:
    """A request for a simple task with `fields` set."""
    fields.setdefault("task", "reverse a string")
    return pb.CollaborateRequest(**fields)


BAD: list[tuple[str, dict[str, Any], dict[str, Any], list[tuple[str, str]]]] = [
    ("blank-task", {"task": " \n\t"}, {}, [("task", "is required and must not be blank")]),
    ("task-too-long", {"task": "x" * 20_001}, {}, [("task", "is 20001 characters; the limit is 20000")]),
    (
        "model-without-provider",
        {"model": "gpt"},
        {},
        [("model", "'gpt' is not of the form provider:model (e.g. openai:gpt-4.1-mini)")],
    ),
    (
        "unknown-provider",
        {"model": "mistral:large"},
        {},
        [("model", "unknown provider 'mistral'; expected one of: openai, anthropic, local")],
    ),
    ("model-with-space", {"model": "openai:gpt 4"}, {}, [("model", "model name 'gpt 4' is not valid")]),
    (
        "six-fallbacks",
        {"model": ",".join(["openai:a"] * 6)},
        {},
        [("model", "lists 6 models; at most 5")],
    ),
    (
        "unknown-agent",
        {"agent_models": {"painter": "openai:gpt-4.1"}},
        {},
        [
            (
                "agent_models[painter]",
                "unknown agent 'painter'; expected one of: architect, coder, reviewer, refiner, tester, documenter",
            )
        ],
    ),
    (
        "empty-agent-model",
        {"agent_models": {"coder": " , "}},
        {},
        [("agent_models[coder]", "is empty; expected provider:model")],
    ),
    ("too-many-refinements", {"max_refinements": 11}, {}, [("max_refinements", "must be at most 10")]),
    ("unknown-on-disconnect", {"on_disconnect": 7}, {}, [("on_disconnect", "unknown value 7")]),
    (
        "long-request-id",
        {"client_request_id": "r" * 129},
        {},
        [("client_request_id", "must be at most 128 characters")],
    ),
    ("zero-cost", {"max_cost_usd": 0.0}, {}, [("max_cost_usd", "must be a positive number of USD")]),
    ("nan-cost", {"max_cost_usd": math.nan}, {}, [("max_cost_usd", "must be a positive number of USD")]),
    (
        "cost-over-the-server-limit",
        {"max_cost_usd": 2.5},
        {"budget_usd_max": 2.0},
        [("max_cost_usd", "must be at most the server's limit of $2")],
    ),
    ("zero-tokens", {"max_tokens": 0}, {}, [("max_tokens", "must be positive")]),
    (
        "tokens-over-the-server-limit",
        {"max_tokens": 50_001},
        {"budget_tokens_max": 50_000},
        [("max_tokens", "must be at most the server's limit of 50000")],
    ),
    (
        "context-too-deep",
        {"context": context(nested(9))},
        {},
        [("context", "is nested deeper than 8 levels")],
    ),
    (
        "context-not-finite",
        {"context": context({"x": math.inf})},
        {},
        [("context", "holds a number that is NaN or infinite; only finite numbers are allowed")],
    ),
    (
        "context-too-big",
        {"context": context({"blob": "x" * 70_000})},  # 70000 + the Struct's framing: 18 bytes
        {},
        [("context", "is 70018 bytes; the limit is 65536")],
    ),
    (
        "several-at-once",
        {"task": "", "model": "nope", "max_refinements": 12, "max_tokens": 0},
        {},
        [
            ("task", "is required and must not be blank"),
            ("model", "'nope' is not of the form provider:model (e.g. openai:gpt-4.1-mini)"),
            ("max_tokens", "must be positive"),
            ("max_refinements", "must be at most 10"),
        ],
    ),
]


@pytest.mark.parametrize(("fields", "server", "violations"), [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_a_bad_request_names_every_bad_field(
    fields: dict[str, Any], server: dict[str, Any], violations: list[tuple[str, str]]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        run_spec(request(**fields), settings(**server), PipelineConfig())
    assert caught.value.violations == violations
    assert caught.value.public_message == "; ".join(f"{f}: {d}" for f, d in violations)


def test_seven_agent_models_are_refused_and_only_six_are_read() -> None:
    models = {f"agent{i}": "openai:gpt-4.1" for i in range(7)}
    with pytest.raises(InvalidArgument) as caught:
        run_spec(request(agent_models=models), settings(), PipelineConfig())
    assert caught.value.violations[0] == ("agent_models", "has 7 entries; there are 6 agents")
    assert len(caught.value.violations) == 1 + 6  # the seventh entry is not even looked at


# Which model each agent gets: the request's per-agent model, else the request's model, else the pipeline
# file's, else the server's default.
MODELS: list[tuple[str, dict[str, Any], dict[str, str], dict[AgentRole, list[ModelRef]]]] = [
    ("server-default", {}, {}, {key: [MINI] for key in AgentRole}),
    ("request-model", {"model": "anthropic:claude-sonnet-4-6"}, {}, {key: [SONNET] for key in AgentRole}),
    (
        "per-agent-wins",
        {"model": "anthropic:claude-sonnet-4-6", "agent_models": {"coder": "openai:gpt-4.1-mini"}},
        {},
        {**{key: [SONNET] for key in AgentRole}, AgentRole.CODER: [MINI]},
    ),
    (
        "pipeline-file-under-the-request",
        {},
        {"tester": "anthropic:claude-sonnet-4-6"},
        {**{key: [MINI] for key in AgentRole}, AgentRole.TESTER: [SONNET]},
    ),
    (
        "fallback-chain",
        {"agent_models": {"Reviewer ": "openai:gpt-4.1-mini, anthropic:claude-sonnet-4-6"}},
        {},
        {**{key: [MINI] for key in AgentRole}, AgentRole.REVIEWER: [MINI, SONNET]},
    ),
]


@pytest.mark.parametrize(("fields", "file", "models"), [row[1:] for row in MODELS], ids=[row[0] for row in MODELS])
def test_each_agent_gets_the_most_specific_model(
    fields: dict[str, Any], file: dict[str, str], models: dict[AgentRole, list[ModelRef]]
) -> None:
    config = PipelineConfig(agents={name: AgentConfig(model=model) for name, model in file.items()})
    spec = run_spec(request(**fields), settings(), config)
    assert spec.models == models


BUDGETS: list[tuple[str, dict[str, Any], dict[str, Any], tuple[float | None, int | None]]] = [
    ("none", {}, {}, (None, None)),
    ("server-defaults", {}, {"budget_usd": 0.5, "budget_tokens": 9000}, (0.5, 9000)),
    (
        "request-wins",
        {"max_cost_usd": 0.25, "max_tokens": 100},
        {"budget_usd": 0.5, "budget_tokens": 9000},
        (0.25, 100),
    ),
    (
        "at-the-limits",
        {"max_cost_usd": 2.0, "max_tokens": 50},
        {"budget_usd_max": 2.0, "budget_tokens_max": 50},
        (2.0, 50),
    ),
]


@pytest.mark.parametrize(("fields", "server", "budgets"), [row[1:] for row in BUDGETS], ids=[row[0] for row in BUDGETS])
def test_budgets_come_from_the_request_within_the_server_limits(
    fields: dict[str, Any], server: dict[str, Any], budgets: tuple[float | None, int | None]
) -> None:
    spec = run_spec(request(**fields), settings(**server), PipelineConfig())
    assert (spec.budget_usd, spec.budget_tokens) == budgets


def test_a_good_request_becomes_its_spec() -> None:
    spec = run_spec(
        request(
            task="  reverse a string \n",
            context=context({"language": "python", "n": [1, 2]}),
            client_request_id="r" * 128,
            on_disconnect=pb.ON_DISCONNECT_CANCEL,
        ),
        settings(max_refinements=3),
        PipelineConfig(),
    )
    assert spec.task == "reverse a string"
    assert spec.context == {"language": "python", "n": [1.0, 2.0]}
    assert (spec.max_refinements, spec.on_disconnect, spec.client_request_id) == (3, pb.ON_DISCONNECT_CANCEL, "r" * 128)
    # Unset on_disconnect means continue; an explicit 0 refinements is kept (not the server's 3).
    bare = run_spec(request(max_refinements=0), settings(max_refinements=3), PipelineConfig())
    assert (bare.on_disconnect, bare.max_refinements, bare.context) == (pb.ON_DISCONNECT_CONTINUE, 0, {})


@pytest.mark.parametrize(
    ("run_id", "violation"),
    [("", ("run_id", "is required")), ("x" * 65, ("run_id", "is longer than any run id"))],
    ids=["empty", "too-long"],
)
def test_a_bad_run_id_is_invalid(run_id: str, violation: tuple[str, str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        run_id_of(run_id)
    assert caught.value.violations == [violation]


@pytest.mark.parametrize("run_id", ["x", "x" * 64, "not-a-uuid"], ids=["one-char", "64-chars", "not-a-uuid"])
def test_any_run_id_up_to_64_characters_is_looked_up(run_id: str) -> None:
    assert run_id_of(run_id) == run_id


@pytest.mark.parametrize(
    ("state", "ok"), [(0, True), (pb.RUN_STATE_COMPLETED, True), (99, False)], ids=["any", "completed", "unknown"]
)
def test_a_state_filter_must_be_a_known_state(state: int, ok: bool) -> None:
    if ok:
        assert run_state_of(state) == state
    else:
        with pytest.raises(InvalidArgument) as caught:
            run_state_of(state)
        assert caught.value.violations == [("state", "unknown value 99")]
