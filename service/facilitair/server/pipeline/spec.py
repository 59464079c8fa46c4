"""A run's validated request as stored with the run, and stage checkpoints; both versioned JSON.

A run row outlives the code that wrote it (a server upgraded while runs are in flight resumes them), so
each stored document carries a `version`, and reading accepts every version ever written. Anything that
cannot be read raises UnreadableRecord, which fails that one run and never stops the server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from facilitair.server.domain import (
    MAX_APPROVAL_TIMEOUT,
    AgentRole,
    CacheMode,
    GatePolicy,
    ModelRef,
    chain_text,
    parse_chain,
)
from facilitair.server.errors import FacilitairError, InvalidArgument, Reason

T = TypeVar("T")

# Version 1 (before versions were written) had the same keys as version 2 without "version"; version 3 added
# "gates" (approval gates: none in older versions).
SPEC_VERSION = 3
CHECKPOINT_VERSION = 2


class UnreadableRecord(FacilitairError):
    """A stored spec or checkpoint this server cannot read (corrupt, or from an unknown version)."""

    reason = Reason.RUN_NOT_RESUMABLE


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A validated request, as stored with the run so that it can be resumed."""

    task: str
    context: dict[str, Any]
    models: dict[AgentRole, list[ModelRef]]  # per agent: the model, then its fallbacks in order
    max_refinements: int
    on_disconnect: int
    client_request_id: str = ""
    budget_usd: float | None = None
    budget_tokens: int | None = None
    # The sandbox the run's tests run in ("bwrap", "unsandboxed"); "" when the server ran no tests when the run
    # was created. Kept with the run: it decides the order of the stages, which a resumed run must keep.
    sandbox: str = ""
    cache: CacheMode = CacheMode.OFF  # how the run uses the response cache (pipeline/cache.py)
    # The agents after whose stages the run waits for a person, with how each gate waits.
    gates: dict[AgentRole, GatePolicy] = field(default_factory=dict)
    # The run's own webhook URL ("" for none): kept with the run, so whichever replica ends it queues the delivery.
    webhook_url: str = ""

    def gate(self, role: AgentRole) -> GatePolicy | None:
        """The gate after a stage of `role`, if any (the Refiner's is the Coder's: it rewrites the code)."""
        return self.gates.get(AgentRole.CODER if role == AgentRole.REFINER else role)

    def to_json(self) -> str:
        """Serialize for the run row."""
        return json.dumps(
            {
                "version": SPEC_VERSION,
                "task": self.task,
                "context": self.context,
                "max_refinements": self.max_refinements,
                "models": {r.label: chain_text(m) for r, m in self.models.items()},
                "on_disconnect": self.on_disconnect,
                "client_request_id": self.client_request_id,
                "budget_usd": self.budget_usd,
                "budget_tokens": self.budget_tokens,
                "gates": {
                    r.label: {"timeout": g.timeout, "approve_on_timeout": g.approve_on_timeout}
                    for r, g in self.gates.items()
                },
                "sandbox": self.sandbox,
                "cache": self.cache.label,
                "webhook_url": self.webhook_url,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """Read back any version to_json ever wrote; UnreadableRecord for anything else."""
        try:
            data = _document(text, SPEC_VERSION)
            spec = cls(
                task=_typed(data["task"], str),
                context=_typed(data["context"], dict),
                max_refinements=_typed(data["max_refinements"], int),
                models={
                    AgentRole.from_label(k, field="models"): parse_chain(_typed(v, str), field="models")
                    for k, v in _typed(data["models"], dict).items()
                },
                on_disconnect=_typed(data["on_disconnect"], int),
                client_request_id=_typed(data.get("client_request_id", ""), str),
                budget_usd=_budget(data.get("budget_usd"), float, "budget_usd"),
                budget_tokens=_budget(data.get("budget_tokens"), int, "budget_tokens"),
                gates={
                    AgentRole.from_label(k, field="gates"): _gate(_typed(v, dict))
                    for k, v in _typed(data.get("gates", {}), dict).items()
                },
                sandbox=_typed(data.get("sandbox", ""), str),
                # Specs stored before the cache existed have no "cache": those runs never used it.
                cache=CacheMode.from_label(_typed(data.get("cache", "off"), str)),
                webhook_url=_typed(data.get("webhook_url", ""), str),  # older specs: none
            )
            if spec.max_refinements < 0:
                raise ValueError(f"max_refinements is {spec.max_refinements}")
        except (KeyError, TypeError, ValueError, OverflowError, InvalidArgument) as exc:
            raise UnreadableRecord(f"the run's stored request cannot be read ({_what(exc)})") from None
        missing = [r.label for r in AgentRole if r not in spec.models]
        if missing:
            raise UnreadableRecord(f"the run's stored request names no model for {', '.join(missing)}")
        return spec

    def all_models(self) -> set[ModelRef]:
        """Every model the run may ask, fallbacks included."""
        return {m for chain in self.models.values() for m in chain}


@dataclass(slots=True)
class StageOutput:
    """What a completed stage produced; this is its checkpoint."""

    stage: int
    role: AgentRole
    round: int
    model: str
    text: str
    # How long the stage took and how many tokens it wrote: what later plans learn from (plan_history.py).
    # Checkpoints written before these were kept have neither; a reader that does not know them ignores them.
    seconds: float | None = None
    output_tokens: int | None = None

    def to_json(self) -> str:
        """Serialize for the checkpoint table."""
        document: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "stage": self.stage,
            "agent": self.role.label,
            "round": self.round,
            "model": self.model,
        }
        if self.seconds is not None and self.output_tokens is not None:
            document.update(seconds=self.seconds, output_tokens=self.output_tokens)
        document["text"] = self.text
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str) -> StageOutput:
        """Read back any version to_json ever wrote; UnreadableRecord for anything else."""
        try:
            d = _document(text, CHECKPOINT_VERSION)
            return cls(
                _typed(d["stage"], int),
                AgentRole.from_label(_typed(d["agent"], str), field="agent"),
                _typed(d["round"], int),
                _typed(d["model"], str),
                _typed(d["text"], str),
                _typed(d["seconds"], float) if "seconds" in d else None,
                _typed(d["output_tokens"], int) if "output_tokens" in d else None,
            )
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise UnreadableRecord(f"a stored stage checkpoint cannot be read ({_what(exc)})") from None


def webhook_url_of(text: str) -> str:
    """The webhook URL of a stored spec ("" for none, or when the spec cannot be read: the run fails without it)."""
    try:
        url = json.loads(text).get("webhook_url", "")
    except (ValueError, AttributeError):
        return ""
    return url if isinstance(url, str) else ""


def _document(text: str, newest: int) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    version = data.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= newest:
        raise ValueError(f"version {version!r} is not one this server reads (1 to {newest})")
    return data


def _typed(value: object, kind: type[T]) -> T:
    # bool is an int to isinstance; a stored boolean where a number belongs is corrupt, not 0 or 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, found {type(value).__name__}")
    return value


def _budget(value: object, kind: type[float] | type[int], name: str) -> Any:
    """A stored budget: None, or a positive finite number of its kind (a whole USD amount may be stored as 5)."""
    if value is None:
        return None
    allowed = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed) or value <= 0 or not math.isfinite(kind(value)):
        raise ValueError(f"{name} is {str(value)[:40]!r}, not a positive number")
    return kind(value)


def _gate(data: dict[str, Any]) -> GatePolicy:
    timeout = data["timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_APPROVAL_TIMEOUT:
        raise ValueError(f"a gate's timeout is {str(timeout)[:40]!r}")
    return GatePolicy(float(timeout), _typed(data["approve_on_timeout"], bool))


def _what(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}"
    if isinstance(exc, InvalidArgument):
        return exc.public_message
    return str(exc)[:200]
