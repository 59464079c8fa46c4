"""The outbox rows of a run's end: which endpoints hear of it, and the exact JSON body they get.

The recorder asks for them when it appends a terminal event, so they are written in that event's transaction
(store/*: write_batch): no run ends without its webhooks queued, and none is queued for an end that was not stored.
The body holds ids, state, usage, cost and file names; never the task, prompts, outputs or file contents.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from facilitair.server.errors import FailedPrecondition, InvalidArgument
from facilitair.server.store.base import WebhookDelivery
from facilitair.server.webhooks.config import EVENT_TYPES, Endpoint, WebhookConfig
from facilitair.v1 import orchestrator_pb2 as pb

# Ids are derived from what they name (run, event seq, endpoint), so writing a batch again makes the same rows.
_IDS = uuid.UUID("5b0c8f4e-2f1d-4b8e-9a55-6f3e1f0c7a10")
_STATES = {
    pb.RUN_STATE_COMPLETED: "completed",
    pb.RUN_STATE_FAILED: "failed",
    pb.RUN_STATE_CANCELLED: "cancelled",
}


def message_id(run_id: str, seq: int, url: str) -> str:
    """The webhook-id of one event of a run sent to one endpoint: the same on every attempt and every replica."""
    return "msg_" + uuid.uuid5(_IDS, f"{run_id}/{seq}/{url}").hex


def iso(seconds: float) -> str:
    """An RFC 3339 UTC time with milliseconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(event_type: str, run_id: str, summary: pb.RunSummary, failure: pb.RunFailed | None, now: float) -> bytes:
    """The JSON body: Standard Webhooks' {type, timestamp, data} with the run's ids, state, usage, cost, files."""
    usage = summary.usage
    data: dict[str, Any] = {
        "run_id": run_id,
        "state": _STATES.get(summary.state, pb.RunState.Name(summary.state).removeprefix("RUN_STATE_").lower()),
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "cache_write_input_tokens": usage.cache_write_input_tokens,
            "estimated": usage.estimated,
        },
        "cost_usd": usage.cost_usd,
        "cost_unknown": usage.cost_unknown,
        "created_at": iso(summary.created_at.ToNanoseconds() / 1e9),
    }
    if summary.state in _STATES:
        data["finished_at"] = iso(now)
    if summary.HasField("pending_approval"):
        # A run at an approval gate: which gate, and until when a decision is awaited (not its text: the
        # receiver reads that with GetRun, as the caller may).
        gate = summary.pending_approval
        data["approval"] = {
            "approval_id": gate.approval_id,
            "stage": gate.stage,
            "agent": pb.Agent.Name(gate.agent).removeprefix("AGENT_").lower(),
            "expires_at": iso(gate.expires_at.ToNanoseconds() / 1e9),
        }
    if summary.HasField("result"):
        result = summary.result
        data["files"] = [a.path for a in result.artifacts]
        data["approved"] = result.approved
        data["refinements"] = result.refinements
    if failure is not None:
        # The stable reason and status, not the message: a provider's error text may quote the request.
        data["error"] = {"code": failure.code, "reason": failure.reason, "retryable": failure.retryable}
    document = {"type": event_type, "timestamp": iso(now), "data": data}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


class Outbox:
    """Makes the outbox rows of run events from the configured endpoints."""

    def __init__(self, config: WebhookConfig) -> None:
        self._config = config

    def check_request_url(self, url: str) -> None:
        """Refuse a run's own webhook URL this server would not call (the URL is never echoed: it may hold a token)."""
        if self._config.request_urls is None:
            raise FailedPrecondition("webhook_url: this server accepts no request-supplied webhook URLs")
        if self._config.request_endpoint(url) is None:
            raise InvalidArgument("webhook_url", "its host is not in the server's webhook allow-list")

    def deliveries(
        self,
        event_type: str,
        *,
        run_id: str,
        principal: str,
        seq: int,
        summary: pb.RunSummary,
        failure: pb.RunFailed | None = None,
        request_url: str = "",
    ) -> list[WebhookDelivery]:
        """One row per endpoint that wants this event of this caller's run, and one for its own URL if any."""
        endpoints = list(self._config.for_event(event_type, principal))
        if request_url and all(e.url != request_url for e in endpoints):
            # Written even if the allow-list changed since the run was created: the dispatcher checks again.
            endpoints.append(Endpoint(request_url, EVENT_TYPES, ""))
        if not endpoints:
            return []
        now = time.time()
        payload = body(event_type, run_id, summary, failure, now)
        return [
            WebhookDelivery(message_id(run_id, seq, e.url), run_id, event_type, e.url, payload, now) for e in endpoints
        ]
