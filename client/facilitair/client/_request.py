"""Requests built from Python values, refusing what cannot be sent with FacilitairError (INVALID_ARGUMENT).

Protobuf raises ValueError or TypeError for a negative unsigned field or a value a Struct cannot hold;
callers get the library's error naming the field instead, before anything is sent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from facilitair.client._errors import FacilitairError, StatusCode
from facilitair.client._types import Agent, Approval, Decision, OnApprovalTimeout
from facilitair.v1 import orchestrator_pb2 as pb

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1

# The server's limits on a request (docs/security.md), checked here as well: a request over them is refused
# before it is sent, in the server's own words, and never reaches gRPC's 1 MiB message limit, whose refusal
# names no field (a 1.8 MB task file got "Received message larger than max").
MAX_TASK_CHARS = 20_000
MAX_CONTEXT_BYTES = 64 * 1024


def invalid(field: str, why: str) -> FacilitairError:
    """The error for one bad argument."""
    return FacilitairError(StatusCode.INVALID_ARGUMENT, f"{field}: {why}", [(field, why)])


def count(field: str, value: int, maximum: int = _UINT64_MAX) -> int:
    """A whole number from 0 to `maximum`, or the error naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"must be a whole number, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise invalid(field, f"must be from 0 to {maximum}, not {value}")
    return value


def context_struct(context: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON-like mapping as a Struct, or the error saying which value cannot be one."""
    if not isinstance(context, Mapping):
        raise invalid("context", f"must be a mapping (a JSON object), not {type(context).__name__}")
    struct = struct_pb2.Struct()
    try:
        _check_json("context", context)
        struct.update(dict(context))
    except (TypeError, ValueError) as exc:
        raise invalid("context", str(exc)) from None
    return struct


def _check_json(where: str, value: object) -> None:
    """Raise TypeError naming the first value JSON (hence a Struct) cannot hold."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value}, which JSON cannot hold")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key {key!r} that is not a string")
            _check_json(f"{where}.{key}", item)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(f"{where}[{index}]", item)
        return
    raise TypeError(f"{where} is a {type(value).__name__}, which JSON cannot hold")


# The response cache modes by the names the CLI and the client take (empty: the server's default).
CACHE_MODES = {
    "off": pb.CACHE_MODE_OFF,
    "read-write": pb.CACHE_MODE_READ_WRITE,
    "read-only": pb.CACHE_MODE_READ_ONLY,
    "refresh": pb.CACHE_MODE_REFRESH,
}


def collaborate_request(
    task: str,
    *,
    context: Mapping[str, Any] | None,
    model: str,
    agent_models: Mapping[str, str] | None,
    max_refinements: int | None,
    max_cost_usd: float | None,
    max_tokens: int | None,
    cancel_on_disconnect: bool,
    client_request_id: str | None,
    coalesce_tokens: bool,
    pause_after: Iterable[Agent | str] = (),
    approval_timeout: float | None = None,
    on_approval_timeout: OnApprovalTimeout | None = None,
    cache: str = "",
    webhook_url: str = "",
) -> pb.CollaborateRequest:
    """The CollaborateRequest for these arguments; the server checks the rest (blank task, limits)."""
    if not isinstance(task, str):
        raise invalid("task", f"must be a string, not {type(task).__name__}")
    if len(task) > MAX_TASK_CHARS:
        raise invalid("task", f"is {len(task)} characters; the limit is {MAX_TASK_CHARS}")
    models = dict(agent_models or {})
    for agent, value in models.items():
        if not isinstance(agent, str) or not isinstance(value, str):
            raise invalid("agent_models", "maps agent names to model strings")
    request = pb.CollaborateRequest(
        task=task,
        model=model,
        agent_models=models,
        on_disconnect=pb.ON_DISCONNECT_CANCEL if cancel_on_disconnect else pb.ON_DISCONNECT_CONTINUE,
        # An idempotency key makes retrying the start itself safe.
        client_request_id=client_request_id or str(uuid.uuid4()),
        coalesce_tokens=coalesce_tokens,
    )
    if cache:
        if cache not in CACHE_MODES:
            raise invalid("cache", f"must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
        request.cache = CACHE_MODES[cache]
    if webhook_url:
        # The server checks it (its allow-list and secret decide); only the type is checked here.
        if not isinstance(webhook_url, str):
            raise invalid("webhook_url", f"must be a string, not {type(webhook_url).__name__}")
        request.webhook_url = webhook_url
    if context:
        request.context.CopyFrom(context_struct(context))
        if (size := request.context.ByteSize()) > MAX_CONTEXT_BYTES:
            raise invalid("context", f"is {size} bytes; the limit is {MAX_CONTEXT_BYTES}")
    if max_refinements is not None:
        request.max_refinements = count("max_refinements", max_refinements, _UINT32_MAX)
    if max_cost_usd is not None:
        if isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, int | float):
            raise invalid("max_cost_usd", f"must be a number, not {type(max_cost_usd).__name__}")
        if not math.isfinite(max_cost_usd) or max_cost_usd <= 0:
            raise invalid("max_cost_usd", f"must be a positive number of USD, not {max_cost_usd}")
        request.max_cost_usd = max_cost_usd
    if max_tokens is not None:
        request.max_tokens = count("max_tokens", max_tokens)
        if max_tokens == 0:
            raise invalid("max_tokens", "must be at least 1")
    _gates(request, pause_after, approval_timeout, on_approval_timeout)
    return request


# The agents whose stage may be followed by an approval gate (the Refiner's output is reviewed anyway, and the
# Documenter's ends the run): the server refuses others too, this names them before sending.
PAUSABLE = (Agent.ARCHITECT, Agent.CODER, Agent.REVIEWER, Agent.TESTER)


def _gates(
    request: pb.CollaborateRequest,
    pause_after: Iterable[Agent | str],
    timeout: float | None,
    on_timeout: OnApprovalTimeout | None,
) -> None:
    """pause_after ("architect" or Agent.ARCHITECT), approval_timeout (seconds), on_approval_timeout."""
    if isinstance(pause_after, str):
        raise invalid("pause_after", "must be a list of agents, not a string")
    names = ", ".join(a.name.lower() for a in PAUSABLE)
    for item in pause_after:
        agent = Agent.__members__.get(item.upper()) if isinstance(item, str) else item
        if agent not in PAUSABLE:
            raise invalid("pause_after", f"{item!r} is not one of {names}")
        if int(agent) not in request.pause_after:
            request.pause_after.append(int(agent))  # type: ignore[arg-type]
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout):
            raise invalid("approval_timeout", f"must be a number of seconds, not {timeout!r}")
        if timeout <= 0:
            raise invalid("approval_timeout", f"must be more than 0 seconds, not {timeout}")
        request.approval_timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9)))
    if on_timeout is not None:
        if on_timeout not in OnApprovalTimeout._value2member_map_:
            raise invalid("on_approval_timeout", f"{on_timeout!r} is not an OnApprovalTimeout")
        request.on_approval_timeout = int(on_timeout)  # type: ignore[assignment]


def submit_approval_request(
    run_id: str, approval: Approval, *, approval_id: str, client_request_id: str | None
) -> pb.SubmitApprovalRequest:
    """The SubmitApprovalRequest for a decision; the server checks the rest (REVISE's comment, known paths)."""
    if not isinstance(approval.decision, int) or approval.decision not in Decision._value2member_map_:
        raise invalid("decision", f"{approval.decision!r} is not a Decision")
    if approval.decision is Decision.UNSPECIFIED:
        raise invalid("decision", "is required: APPROVE, REVISE, EDIT or REJECT")
    if approval.decision != Decision.EDIT and (approval.text or approval.files):
        raise invalid("decision", "edited text or files go with EDIT only")
    for path, content in approval.files.items():
        if not isinstance(path, str) or not isinstance(content, str):
            raise invalid("edited_files", "maps paths to their new contents (strings)")
    return pb.SubmitApprovalRequest(
        run_id=run_id,
        approval_id=approval_id,
        decision=int(approval.decision),  # type: ignore[arg-type]
        comment=approval.comment,
        edited_text=approval.text,
        edited_files=[pb.EditedFile(path=path, content=content) for path, content in approval.files.items()],
        # Retrying the same answer (a lost response) records it once.
        client_request_id=client_request_id or str(uuid.uuid4()),
    )
