"""Domain values shared by every layer: agents, model references, usage, files, verdicts, plans.

The wire format (facilitair.v1) is built from these in one place, events/wire.py.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from facilitair.server.errors import InvalidArgument

# `local` runs GGUF models on this machine (the `local` extra); its model names are file names or paths.
PROVIDERS = ("openai", "anthropic", "local")


# What a text column of either store cannot hold: NUL (PostgreSQL's text refuses it; SQLite keeps it, so a run
# would work on one store and not the other) and lone surrogates (not UTF-8: asyncpg and sqlite3 cannot encode
# them). A proto3 string is valid UTF-8, so it cannot carry a surrogate, but JSON can spell one ("\ud800") and a
# page token is JSON.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def why_unstorable(text: str) -> str | None:
    """Why no store could hold `text` (a NUL character, a lone surrogate), or None when both can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "holds a NUL character (U+0000), which cannot be stored"
    return f"holds a lone surrogate (U+{ord(found.group()):04X}), which is not valid UTF-8"


class AgentRole(enum.IntEnum):
    """The agents of the team; values match the `facilitair.v1.Agent` enum numbers."""

    ARCHITECT = 1
    CODER = 2
    REVIEWER = 3
    REFINER = 4
    TESTER = 5
    DOCUMENTER = 6

    @property
    def label(self) -> str:
        """The lower-case name used in requests and configuration ("coder")."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str, *, field: str) -> AgentRole:
        """Parse a lower-case agent name, raising InvalidArgument that names `field`."""
        try:
            return cls[label.strip().upper()]
        except KeyError:
            known = ", ".join(a.label for a in cls)
            raise InvalidArgument(field, f"unknown agent {label!r}; expected one of: {known}") from None


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model at a provider, written "provider:model"."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"

    @classmethod
    def parse(cls, text: str, *, field: str) -> ModelRef:
        """Parse "provider:model", raising InvalidArgument that names `field`."""
        provider, sep, model = text.strip().partition(":")
        provider = provider.strip().lower()
        model = model.strip()
        if not sep or not provider or not model:
            raise InvalidArgument(field, f"{text!r} is not of the form provider:model (e.g. openai:gpt-4.1-mini)")
        if provider not in PROVIDERS:
            raise InvalidArgument(field, f"unknown provider {provider!r}; expected one of: {', '.join(PROVIDERS)}")
        if len(model) > 200 or any(c.isspace() for c in model):
            raise InvalidArgument(field, f"model name {model[:40]!r} is not valid")
        return cls(provider, model)


MAX_FALLBACKS = 5


def parse_chain(text: str, *, field: str) -> list[ModelRef]:
    """Parse "provider:model" or a comma-separated fallback list of them, tried in order."""
    parts = [p for p in (part.strip() for part in text.split(",")) if p]
    if not parts:
        raise InvalidArgument(field, "is empty; expected provider:model")
    if len(parts) > MAX_FALLBACKS:
        raise InvalidArgument(field, f"lists {len(parts)} models; at most {MAX_FALLBACKS}")
    return [ModelRef.parse(part, field=field) for part in parts]


def chain_text(chain: list[ModelRef]) -> str:
    """The inverse of parse_chain."""
    return ",".join(str(m) for m in chain)


@dataclass(slots=True)
class UsageTotals:
    """Tokens and cost, added up over stages; input_tokens includes the cache reads and writes."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False  # some counts are estimates: a stage was cut off before its provider reported them

    def add(self, other: UsageTotals) -> None:
        """Add another usage to this one."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.cost_unknown = self.cost_unknown or other.cost_unknown
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.estimated = self.estimated or other.estimated


class RunState(enum.IntEnum):
    """Where a run is in its life; values match the `facilitair.v1.RunState` enum numbers (stored as such)."""

    QUEUED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5
    INTERRUPTED = 6  # the server stopped mid-run; the run resumes at the next start


# The one definition of which states are final, used by the Python code and by both stores' SQL (and the
# partial indexes made on that SQL): a finished run has its terminal event; an unfinished one may still
# produce events, and has an owner.
# Sets of int, so that the plain numbers of a stored row or a wire message can be looked up in them.
FINISHED_STATES: frozenset[int] = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})
UNFINISHED_STATES: frozenset[int] = frozenset({RunState.QUEUED, RunState.RUNNING, RunState.INTERRUPTED})


class CacheMode(enum.IntEnum):
    """How a run uses the response cache; values match the `facilitair.v1.CacheMode` enum numbers."""

    OFF = 1
    READ_WRITE = 2
    READ_ONLY = 3
    REFRESH = 4

    @property
    def label(self) -> str:
        """The name flags and files use: "off", "read-write", "read-only", "refresh"."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> CacheMode:
        """The mode a label names; ValueError for any other text."""
        return cls[label.upper().replace("-", "_")]

    @property
    def reads(self) -> bool:
        """Whether a stage may be answered from the cache."""
        return self in (CacheMode.READ_WRITE, CacheMode.READ_ONLY)

    @property
    def writes(self) -> bool:
        """Whether a clean answer is stored."""
        return self in (CacheMode.READ_WRITE, CacheMode.REFRESH)


class ArtifactKind(enum.IntEnum):
    """What a produced file is for; values match the `facilitair.v1.ArtifactKind` enum numbers."""

    CODE = 1
    TEST = 2
    DOC = 3
    DESIGN = 4


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file a stage produced: version 1, 2, ... of its path; `requested_path` when it had to move aside."""

    path: str
    kind: ArtifactKind
    content: str
    stage: int
    version: int = 1
    requested_path: str = ""  # the path the stage named, when a file of another kind held it


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem the reviewer raised."""

    severity: str
    file: str
    description: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The reviewer's decision; `well_formed` is False when its output could not be read."""

    approved: bool
    summary: str
    issues: list[Issue] = field(default_factory=list)
    well_formed: bool = True


@dataclass(frozen=True, slots=True)
class PlannedStage:
    """One stage a run expects, with its estimates (cost None when the model has no known price)."""

    role: AgentRole
    model: ModelRef
    estimated_seconds: float
    estimated_cost_usd: float | None
    # The Test run step (no model asked; `role` is the Tester whose tests it runs): the sandbox it runs in.
    test_run_in: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The stages a run expects when the first review approves, and the bound on refinement."""

    stages: list[PlannedStage]
    max_refinements: int
    estimated_seconds: float
    estimated_cost_usd: float | None
    max_estimated_cost_usd: float | None
    # Completed stages of these models the estimates learned from (0: the built-in table alone).
    history_stages: int = 0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What a completed run produced: the final files, the last review's decision, the rounds run."""

    artifacts: list[Artifact]
    approved: bool
    refinements: int
    tests: TestRun | None = None  # the last Test run step; None when the run runs no tests


@dataclass(frozen=True, slots=True)
class TestFailure:
    """One test that failed or errored: its name, the assertion's message, a bounded traceback excerpt."""

    __test__ = False  # not a pytest test class, whatever its name

    name: str
    message: str
    excerpt: str


@dataclass(frozen=True, slots=True)
class TestReport:
    """What a Test run step found; `executed` False with `not_run_reason` when the tests did not run."""

    __test__ = False

    executed: bool
    not_run_reason: str = ""
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: tuple[TestFailure, ...] = ()
    timed_out: bool = False
    truncated: bool = False  # the output was cut at its cap
    stopped: str = ""  # a limit that stopped the tests ("CPU time limit of 30 s"), else empty

    @property
    def ok(self) -> bool:
        """The tests ran, at least one passed, and none failed, errored or was stopped."""
        return self.executed and self.passed > 0 and not (self.failed or self.errors or self.timed_out or self.stopped)


@dataclass(frozen=True, slots=True)
class TestRun:
    """One Test run step of a run: its stage, the refinement round it tested, what it found."""

    __test__ = False

    stage: int
    round: int
    report: TestReport
