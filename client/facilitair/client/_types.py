"""Typed views of the wire types, so callers' code reads without `WhichOneof` strings or proto enum names.

The enums mirror the proto's (a test checks that they agree); being IntEnums, they compare equal to the
numbers in messages and can be assigned to message fields.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from facilitair.client._errors import FacilitairError, RunCancelled, RunFailed, StatusCode
from facilitair.v1 import orchestrator_pb2 as pb


class EventKind(enum.StrEnum):
    """The payload a RunEvent carries; equal to its oneof field name."""

    RUN_STARTED = "run_started"
    STAGE_STARTED = "stage_started"
    THINKING = "thinking"
    TOKEN_DELTA = "token_delta"  # noqa: S105 - an event name, not a secret
    STAGE_COMPLETED = "stage_completed"
    REVIEW_VERDICT = "review_verdict"
    ARTIFACT_PRODUCED = "artifact_produced"
    HEARTBEAT = "heartbeat"
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    ATTEMPT_RESET = "attempt_reset"
    MODEL_FALLBACK = "model_fallback"
    TESTS_STARTED = "tests_started"
    TESTS_OUTPUT = "tests_output"
    TESTS_FINISHED = "tests_finished"
    CACHE_HIT = "cache_hit"
    #: A payload this version of the library does not know (a newer server).
    UNKNOWN = "unknown"


TERMINAL_KINDS = frozenset({EventKind.RUN_COMPLETED, EventKind.RUN_FAILED, EventKind.RUN_CANCELLED})


def event_kind(event: pb.RunEvent) -> EventKind:
    """What the event is: `event_kind(e) is EventKind.TOKEN_DELTA`."""
    name = event.WhichOneof("payload")
    try:
        return EventKind(name or "unknown")
    except ValueError:
        return EventKind.UNKNOWN


def is_terminal(event: pb.RunEvent) -> bool:
    """True for the last event of a run: run_completed, run_failed or run_cancelled."""
    return event_kind(event) in TERMINAL_KINDS


class RunState(enum.IntEnum):
    """Where a run is in its life (facilitair.v1.RunState without the prefix)."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5
    INTERRUPTED = 6


class Agent(enum.IntEnum):
    """One role in the team (facilitair.v1.Agent without the prefix)."""

    UNSPECIFIED = 0
    ARCHITECT = 1
    CODER = 2
    REVIEWER = 3
    REFINER = 4
    TESTER = 5
    DOCUMENTER = 6


class ArtifactKind(enum.IntEnum):
    """What a produced file is for (facilitair.v1.ArtifactKind without the prefix)."""

    UNSPECIFIED = 0
    CODE = 1
    TEST = 2
    DOC = 3
    DESIGN = 4


class OnDisconnect(enum.IntEnum):
    """What happens to a run when the stream that started it ends first."""

    UNSPECIFIED = 0
    CONTINUE = 1
    CANCEL = 2


class StoreKind(enum.IntEnum):
    """Where a server keeps its runs (facilitair.v1.StoreKind without the prefix), in ServerInfo.store."""

    UNSPECIFIED = 0
    SQLITE = 1
    POSTGRESQL = 2


@dataclass(frozen=True)
class CompletedRun:
    """A run that ended with a result: its files, the review's approval and what it cost."""

    run_id: str
    #: The final files (design, code, tests, docs), each with `path`, `kind` and `content`.
    files: list[pb.Artifact]
    #: Whether the last review approved the code. A run may complete unapproved when refinements ran out.
    approved: bool
    refinements: int
    usage: pb.Usage
    #: Wall time of the run in seconds.
    seconds: float
    #: The run_completed event itself.
    event: pb.RunEvent
    #: Whether the run's last test run passed (the Tester's tests, run in the server's sandbox).
    tests_passed: bool = False
    #: The last test run's results (counts, failures); None when the server runs no tests.
    tests: pb.TestsFinished | None = None


def result_of(event: pb.RunEvent) -> CompletedRun:
    """The outcome a terminal event stands for: a CompletedRun, or RunFailed / RunCancelled raised."""
    kind = event_kind(event)
    if kind is EventKind.RUN_COMPLETED:
        done = event.run_completed
        return CompletedRun(
            run_id=event.run_id,
            files=list(done.result.artifacts),
            approved=done.result.approved,
            refinements=done.result.refinements,
            usage=done.usage,
            seconds=done.duration.ToNanoseconds() / 1e9,
            event=event,
            tests_passed=done.result.tests_passed,
            tests=done.result.tests if done.result.HasField("tests") else None,
        )
    if kind is EventKind.RUN_FAILED:
        raise RunFailed(event.run_id, event.run_failed)
    if kind is EventKind.RUN_CANCELLED:
        raise RunCancelled(event.run_id, event.run_cancelled)
    raise FacilitairError(StatusCode.INVALID_ARGUMENT, f"event {event.seq} ({kind}) does not end a run")
