"""Requests to domain values: validation with every field violation named, model resolution."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from facilitair.server.domain import (
    DEFAULT_APPROVAL_TIMEOUT,
    GATED_AGENTS,
    MAX_APPROVAL_TIMEOUT,
    AgentRole,
    ApprovalDecision,
    CacheMode,
    GatePolicy,
    ModelRef,
    chain_text,
    parse_chain,
    why_unstorable,
)
from facilitair.server.errors import FailedPrecondition, InvalidArgument
from facilitair.server.pipeline.spec import RunSpec
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.providers import ProviderRegistry
from facilitair.server.runs.approvals import ApprovalRequest
from facilitair.server.settings import ConfigError, Settings
from facilitair.server.webhooks.config import request_url_problem
from facilitair.v1 import orchestrator_pb2 as pb

MAX_TASK_CHARS = 20_000
MAX_CONTEXT_BYTES = 64 * 1024
MAX_CONTEXT_DEPTH = 8
MAX_REFINEMENTS = 10
MAX_REQUEST_ID_CHARS = 128
# An error names at most this many unstorable strings in one field (a context can hold thousands, and the status
# goes in a trailer), so each field that has one is named.
MAX_STRING_VIOLATIONS = 3
# A field path longer than this is cut (a context's keys nest; each is cut to MAX_KEY_SHOWN characters too).
MAX_FIELD_SHOWN = 120
MAX_KEY_SHOWN = 40


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def unstorable_strings(request: Message) -> list[tuple[str, str]]:
    """A field violation for each string of `request` that no store could hold (MAX_STRING_VIOLATIONS per field).

    Every string counts: fields, map keys and values, and the keys and strings of a Struct (a run's context),
    so a field added later is checked too. The guard calls this for every request of our service.
    """
    problems: list[tuple[str, str]] = []
    per_field: dict[str, int] = {}
    for field, text in _strings(request, ""):
        problem = why_unstorable(text)
        if problem is None:
            continue
        top = field.partition("[")[0].partition(".")[0]
        per_field[top] = per_field.get(top, 0) + 1
        if per_field[top] <= MAX_STRING_VIOLATIONS:
            shown = field if len(field) <= MAX_FIELD_SHOWN else field[: MAX_FIELD_SHOWN - 1] + "…"
            problems.append((shown, problem))
    return problems


def _key(key: object) -> str:
    # repr escapes a NUL or a control character, so the field path itself stays printable.
    return repr(str(key)[:MAX_KEY_SHOWN])[1:-1]


def _strings(message: Message, path: str) -> Iterator[tuple[str, str]]:
    """(field path, text) for every string in a message; a Struct's keys as `context[files][a.py]`."""
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        for key, value in message.fields.items():  # type: ignore[attr-defined]
            inner = f"{path}[{_key(key)}]"
            yield inner, key
            yield from _strings(value, inner)
    elif kind == "google.protobuf.ListValue":
        for index, value in enumerate(message.values):  # type: ignore[attr-defined]
            yield from _strings(value, f"{path}[{index}]")
    elif kind == "google.protobuf.Value":
        held = message.WhichOneof("kind")
        if held == "string_value":
            yield path, message.string_value  # type: ignore[attr-defined]
        elif held in ("struct_value", "list_value"):
            yield from _strings(getattr(message, held), path)
    else:
        for field, value in message.ListFields():
            name = f"{path}.{field.name}" if path else field.name
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field, value_field = field.message_type.fields
                for key, item in value.items():
                    entry = f"{name}[{_key(key)}]"
                    yield from _values(key_field, [key], entry)
                    yield from _values(value_field, [item], entry)
            else:
                yield from _values(field, value if field.is_repeated else [value], name)


def _values(field: FieldDescriptor, values: Any, path: str) -> Iterator[tuple[str, str]]:
    for index, value in enumerate(values):
        where = f"{path}[{index}]" if field.is_repeated else path
        if field.type == FieldDescriptor.TYPE_STRING:
            yield where, value
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _strings(value, where)


def run_spec(request: pb.CollaborateRequest, settings: Settings, config: PipelineConfig) -> RunSpec:
    """Validate a CollaborateRequest and resolve the model of every agent."""
    problems: list[tuple[str, str]] = []
    task = request.task.strip()
    if not task:
        problems.append(("task", "is required and must not be blank"))
    elif len(request.task) > MAX_TASK_CHARS:
        problems.append(("task", f"is {len(request.task)} characters; the limit is {MAX_TASK_CHARS}"))

    context = _context(request, problems)

    request_model: list[ModelRef] | None = None
    if request.model:
        try:
            request_model = parse_chain(request.model, field="model")
        except InvalidArgument as exc:
            problems += exc.violations

    overrides: dict[AgentRole, list[ModelRef]] = {}
    if len(request.agent_models) > len(AgentRole):
        problems.append(("agent_models", f"has {len(request.agent_models)} entries; there are {len(AgentRole)} agents"))
    for name, model in list(request.agent_models.items())[: len(AgentRole)]:
        field = f"agent_models[{name[:40]}]"
        try:
            overrides[AgentRole.from_label(name, field=field)] = parse_chain(model, field=field)
        except InvalidArgument as exc:
            problems += exc.violations

    budget_usd, budget_tokens = _budgets(request, settings, problems)
    gates = _gates(request, config, problems)

    if request.HasField("max_refinements") and request.max_refinements > MAX_REFINEMENTS:
        problems.append(("max_refinements", f"must be at most {MAX_REFINEMENTS}"))
    if request.on_disconnect not in pb.OnDisconnect.values():
        problems.append(("on_disconnect", f"unknown value {request.on_disconnect}"))
    if request.cache not in pb.CacheMode.values():
        problems.append(("cache", f"unknown value {request.cache}"))
    if request.webhook_url:
        problem = request_url_problem(request.webhook_url)
        if problem is not None:
            problems.append(("webhook_url", problem))
    if len(request.client_request_id) > MAX_REQUEST_ID_CHARS:
        problems.append(("client_request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters"))
    if problems:
        raise InvalidArgument.many(problems)

    defaults = default_models(settings, config)
    models = {role: overrides.get(role) or request_model or defaults[role] for role in AgentRole}
    max_refinements = request.max_refinements if request.HasField("max_refinements") else settings.max_refinements
    return RunSpec(
        task=task,
        context=context,
        models=models,
        max_refinements=max_refinements,
        on_disconnect=request.on_disconnect or pb.ON_DISCONNECT_CONTINUE,
        client_request_id=request.client_request_id,
        budget_usd=budget_usd,
        budget_tokens=budget_tokens,
        sandbox="" if settings.sandbox == "off" else settings.sandbox,
        cache=CacheMode(request.cache) if request.cache else CacheMode.from_label(settings.cache_default),
        gates=gates,
        webhook_url=request.webhook_url,
    )


def _gates(
    request: pb.CollaborateRequest, config: PipelineConfig, problems: list[tuple[str, str]]
) -> dict[AgentRole, GatePolicy]:
    """The run's approval gates: the request's pause_after (else the pipeline file's), each with its timeout."""
    asked: set[AgentRole] = set()
    for value in request.pause_after:
        if value not in {int(r) for r in GATED_AGENTS}:
            gated = ", ".join(r.label for r in GATED_AGENTS)
            problems.append(("pause_after", f"{pb.Agent.Name(value) if value in pb.Agent.values() else value} "
                                            f"cannot pause a run; these can: {gated}"))  # fmt: skip
        else:
            asked.add(AgentRole(value))
    timeout: float | None = None
    if request.HasField("approval_timeout"):
        timeout = request.approval_timeout.ToNanoseconds() / 1e9
        if not 0 < timeout <= MAX_APPROVAL_TIMEOUT:
            problems.append(
                ("approval_timeout", f"must be more than 0 and at most {MAX_APPROVAL_TIMEOUT:g} s (7 days)")
            )
    if request.on_approval_timeout not in pb.OnApprovalTimeout.values():
        problems.append(("on_approval_timeout", f"unknown value {request.on_approval_timeout}"))
    roles = asked if request.pause_after else {r for r in GATED_AGENTS if config.agent(r).pause_after}
    gates = {}
    for role in sorted(roles):
        agent = config.agent(role)
        approve = (
            request.on_approval_timeout == pb.ON_APPROVAL_TIMEOUT_APPROVE
            if request.on_approval_timeout
            else agent.on_approval_timeout == "approve"
        )
        gates[role] = GatePolicy(timeout or agent.approval_timeout or DEFAULT_APPROVAL_TIMEOUT, approve)
    return gates


def approval_request(request: pb.SubmitApprovalRequest) -> ApprovalRequest:
    """A SubmitApprovalRequest as the run service takes it (its decision checked there)."""
    files: dict[str, str] = {}
    for edited in request.edited_files:
        if edited.path in files:
            raise InvalidArgument("edited_files", f"{edited.path[:80]!r} is given twice")
        files[edited.path] = edited.content
    if request.decision not in {int(d) for d in ApprovalDecision}:
        raise InvalidArgument("decision", "is required: APPROVE, REVISE, EDIT or REJECT")
    if len(request.approval_id) > 64:
        raise InvalidArgument("approval_id", "is longer than any approval id")
    return ApprovalRequest(
        run_id=run_id_of(request.run_id),
        approval_id=request.approval_id,
        decision=ApprovalDecision(request.decision),
        comment=request.comment,
        edited_text=request.edited_text,
        edited_files=files,
        client_request_id=request.client_request_id,
    )


def default_models(settings: Settings, config: PipelineConfig) -> dict[AgentRole, list[ModelRef]]:
    """Each agent's model for a request that names none: the pipeline file's for the agent, else the server's."""
    default = settings.default_models()
    models: dict[AgentRole, list[ModelRef]] = {}
    for role in AgentRole:
        configured = config.agent(role).model
        models[role] = parse_chain(configured, field=f"agents.{role.label}.model") if configured else default
    return models


def check_default_models(providers: ProviderRegistry, settings: Settings, config: PipelineConfig) -> None:
    """ConfigError when an agent's default models all fail admission: every run naming no model would fail.

    Said at start, naming what to install or set, rather than as FAILED_PRECONDITION to every caller (a server
    installed without the `local` extra and started with no key used to start, and then refuse every run).
    """
    problems: dict[str, None] = {}  # one line per distinct problem, in the agents' order
    for role, chain in default_models(settings, config).items():
        why: list[str] = []
        for model in chain:
            try:
                providers.check(model)
            except FailedPrecondition as exc:
                why.append(exc.public_message)
            else:
                break
        else:
            whose = "the default model" if chain == settings.default_models() else f"the {role.label}'s model"
            problems[f"{whose} {chain_text(chain)} cannot run here: {'; '.join(why)}"] = None
    if problems:
        raise ConfigError("every run would fail: " + " | ".join(problems))


def _context(request: pb.CollaborateRequest, problems: list[tuple[str, str]]) -> dict[str, Any]:
    """The request's context as JSON-compatible data, checked for size, depth and finite numbers."""
    context: dict[str, Any] = {}
    if request.HasField("context"):
        size = request.context.ByteSize()
        if size > MAX_CONTEXT_BYTES:
            problems.append(("context", f"is {size} bytes; the limit is {MAX_CONTEXT_BYTES}"))
        else:
            try:
                context = json_format.MessageToDict(request.context)
            except (ValueError, json_format.Error):  # NaN or Infinity: a Struct holds them, JSON (the spec) cannot
                problems.append(("context", "holds a number that is NaN or infinite; only finite numbers are allowed"))
            else:
                if _depth(context) > MAX_CONTEXT_DEPTH:
                    problems.append(("context", f"is nested deeper than {MAX_CONTEXT_DEPTH} levels"))
    return context


def _budgets(
    request: pb.CollaborateRequest, settings: Settings, problems: list[tuple[str, str]]
) -> tuple[float | None, int | None]:
    """The run's cost and token budgets: the request's, bounded by the server's maximum, else the default."""
    budget_usd = settings.budget_usd
    if request.HasField("max_cost_usd"):
        budget_usd = request.max_cost_usd
        if not math.isfinite(budget_usd) or budget_usd <= 0:
            problems.append(("max_cost_usd", "must be a positive number of USD"))
        elif settings.budget_usd_max is not None and budget_usd > settings.budget_usd_max:
            problems.append(("max_cost_usd", f"must be at most the server's limit of ${settings.budget_usd_max:g}"))
    budget_tokens = settings.budget_tokens
    if request.HasField("max_tokens"):
        budget_tokens = request.max_tokens
        if budget_tokens <= 0:
            problems.append(("max_tokens", "must be positive"))
        elif settings.budget_tokens_max is not None and budget_tokens > settings.budget_tokens_max:
            problems.append(("max_tokens", f"must be at most the server's limit of {settings.budget_tokens_max}"))

    return budget_usd, budget_tokens


def run_id_of(run_id: str) -> str:
    """Check a run_id field."""
    if not run_id:
        raise InvalidArgument("run_id", "is required")
    if len(run_id) > 64:
        raise InvalidArgument("run_id", "is longer than any run id")
    return run_id


def run_state_of(state: int) -> int:
    """Check a RunState filter (0: any state)."""
    if state not in pb.RunState.values():
        raise InvalidArgument("state", f"unknown value {state}")
    return state
