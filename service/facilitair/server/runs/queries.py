"""Questions about runs: which run a caller names, summaries with live progress, pages of runs, where a watch
may start.

A caller names a run by its id, by a unique prefix of it (like git), or as "last" (their newest run). Only
the caller's own runs are looked at: a run that belongs to someone else is answered exactly like one that
does not exist (NOT_FOUND), so run ids cannot be probed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import uuid

import structlog

from facilitair.server.domain import FINISHED_STATES, UNFINISHED_STATES, why_unstorable
from facilitair.server.errors import AmbiguousRunId, InvalidArgument, NotFound, OutOfRange
from facilitair.server.events import wire
from facilitair.server.events.eventlog import EventLog
from facilitair.server.events.wire import RunSummary
from facilitair.server.store.base import EventStore, RunRow

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# A token we issue is about 80 characters; anything much longer is not one of ours.
MAX_PAGE_TOKEN_CHARS = 512
# What names the caller's newest run.
LAST = "last"
# A shorter prefix would match too many runs to be of use (16**4 = 65,536 ranges of ids).
MIN_PREFIX = 4
# How many runs an ambiguous prefix's error names.
AMBIGUOUS_SHOWN = 3
# Where str(uuid.uuid4()) puts its hyphens.
_HYPHENS = frozenset((8, 13, 18, 23))
_HEX = frozenset("0123456789abcdef")


class RunQueries:
    """Reads runs for one caller at a time."""

    def __init__(self, store: EventStore, events: EventLog) -> None:
        self._store = store
        self._events = events

    async def owned(self, run_id: str, principal: str) -> RunRow:
        """The caller's run that `run_id` names: its id, a unique prefix of it, or "last".

        NotFound the same whether no run matches or only someone else's does; AmbiguousRunId (naming a few of
        them) when several of the caller's runs start with the prefix. From here on the request's log lines name
        the run by its full id, not by what the caller typed: that is what an operator searches for.
        """
        row = await self._find(run_id, principal)
        structlog.contextvars.bind_contextvars(run_id=row.run_id)
        return row

    async def _find(self, run_id: str, principal: str) -> RunRow:
        if run_id == LAST:
            newest = await self._store.list_runs(principal, None, None, 1)
            if not newest:
                raise NotFound("you have no runs yet, so there is no last one")
            return newest[0]
        if looks_like_run_id(run_id):
            row = await self._store.get_run(str(uuid.UUID(run_id)))  # any spelling of a UUID: the stored one
            if row is None or row.principal != principal:
                raise NotFound(f"run {run_id[:64]!r} not found")
            return row
        prefix = run_id.lower()
        if len(prefix) < MIN_PREFIX or not set(prefix) <= _HEX | {"-"}:
            raise NotFound(
                f"run {run_id[:64]!r} not found: name a run by its id, by the first {MIN_PREFIX} or more characters "
                f"of it (0-9, a-f and -), or as {LAST!r}"
            )
        rows = await self._store.find_runs_by_prefix(principal, prefix, AMBIGUOUS_SHOWN + 1) if _fits(prefix) else []
        if not rows:
            raise NotFound(f"no run of yours has an id starting with {prefix!r}")
        if len(rows) > 1:
            named = ", ".join(r.run_id for r in rows[:AMBIGUOUS_SHOWN])
            more = " and more" if len(rows) > AMBIGUOUS_SHOWN else ""
            raise AmbiguousRunId(
                "run_id", f"{prefix!r} is the start of several of your runs ({named}{more}); give more of the id"
            )
        return rows[0]

    async def last_seq(self, run_id: str) -> int:
        """The newest committed seq of a run: from its live channel when it runs here, else from the store."""
        channel = self._events.channel(run_id)
        return channel.committed_seq if channel is not None else await self._store.last_seq(run_id)

    async def summary(self, row: RunRow, *, with_result: bool) -> RunSummary:
        """The run's stored summary with its live progress and the replica driving it."""
        last_seq = await self.last_seq(row.run_id)
        leased = row.state in UNFINISHED_STATES and row.lease_expires_at and row.lease_expires_at > time.time()
        return wire.summary_of(row.summary, last_seq, with_result=with_result, replica_id=row.owner if leased else "")

    async def check_watch(self, run_id: str, after_seq: int, principal: str) -> RunRow:
        """The run to watch; refuse someone else's run, or a watch that starts past the run's last event."""
        row = await self.owned(run_id, principal)
        last = await self.last_seq(row.run_id)
        if after_seq > last:
            where = "finished " if row.state in FINISHED_STATES else ""
            raise OutOfRange(f"after_seq {after_seq} is past the last event ({last}) of this {where}run")
        return row

    async def list_runs(
        self, principal: str, state: int, page_size: int, page_token: str
    ) -> tuple[list[RunSummary], str]:
        """One page of the principal's runs, newest first, and the next page's token."""
        if page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        before = decode_page_token(page_token) if page_token else None
        rows = await self._store.list_runs(principal, state or None, before, size + 1)
        page = [await self.summary(r, with_result=False) for r in rows[:size]]
        token = encode_page_token(rows[size - 1]) if len(rows) > size else ""
        return page, token


def looks_like_run_id(run_id: str) -> bool:
    """True for a string that could be a run id (a UUID); anything else is not looked up."""
    try:
        uuid.UUID(run_id)
    except ValueError:
        return False
    return True


def _fits(prefix: str) -> bool:
    """True when a run id can start with `prefix`: hex digits, and hyphens only where a UUID has them."""
    return len(prefix) < 36 and all((c == "-") == (i in _HYPHENS) for i, c in enumerate(prefix))


def encode_page_token(row: RunRow) -> str:
    """The token of the page that starts after `row` (keyset pagination on created_at, run_id)."""
    return base64.urlsafe_b64encode(json.dumps([row.created_at, row.run_id]).encode()).decode()


def decode_page_token(token: str) -> tuple[float, str]:
    """Read a token encode_page_token made; InvalidArgument for anything else.

    Only exactly the shape we issue passes: a JSON list of a finite number and a string the stores can hold.
    A token is the caller's bytes, so its JSON can hold what a proto string cannot (a lone surrogate,
    "\ud800") and what no store can (NUL), and NaN, Infinity or 1e999 as the number; none may reach the store.
    """
    try:
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            raise ValueError
        data = json.loads(base64.urlsafe_b64decode(token.encode()), parse_constant=_no_constant)
        if not isinstance(data, list) or len(data) != 2:
            raise TypeError
        created_at, run_id = data
        if not isinstance(run_id, str) or not isinstance(created_at, int | float) or isinstance(created_at, bool):
            raise TypeError
        when = float(created_at)  # OverflowError for an integer past the range of a float
        if not math.isfinite(when) or why_unstorable(run_id) is not None:  # 1e999 is an infinite float to json
            raise ValueError
    except (ValueError, TypeError, UnicodeError, OverflowError, RecursionError, binascii.Error):
        raise InvalidArgument("page_token", "not a token returned by ListRuns") from None
    return when, run_id


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a page token holds")
