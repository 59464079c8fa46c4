"""Idempotency keys: a retry with the same client_request_id attaches to the run the key started, unless the
retry asks for other work, which is refused (ALREADY_EXISTS naming that run) instead of silently answered with
the old run.

"Other work" is a different task or context: what the run is about, stored exactly as the caller sent it
(the task as validated, the context as JSON). The rest of the stored request is not the caller's words but
their resolution at creation: the models, budgets and refinement bound come from the server's settings and
pipeline file when the request leaves them out, so a faithful retry after the server's settings changed would
differ from them and be refused wrongly. on_disconnect and coalesce_tokens describe one stream, not the run:
a retry may well ask for a different one.
"""

from __future__ import annotations

import asyncio

from facilitair.server.errors import AlreadyExists
from facilitair.server.pipeline.spec import RunSpec, UnreadableRecord
from facilitair.server.store.base import EventStore, RunRow

Key = tuple[str, str]  # (principal, client_request_id)


class IdempotencyKeys:
    """The run each idempotency key started: in the store once committed, or being created here right now.

    A second call with the key of a run being created waits for that creation instead of starting another run
    (the store answers only once the run is committed).
    """

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._creating: dict[Key, asyncio.Future[str]] = {}

    async def existing(self, key: Key, spec: RunSpec) -> str | None:
        """The id of the run `key` already started (AlreadyExists when `spec` asks for other work), or None.

        From a None to `creating` the caller must not await, or two calls with one key could both start a run.
        """
        row = await self._row(key)
        if row is None:
            return None
        check_same_request(row, spec)
        return row.run_id

    def creating(self, key: Key, creation: asyncio.Future[str]) -> None:
        """A run for `key` is being created; once that is over (stored, or failed) the store alone answers."""
        self._creating[key] = creation
        creation.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: Key, creation: asyncio.Future[str]) -> None:
        if self._creating.get(key) is creation:
            del self._creating[key]

    async def _row(self, key: Key) -> RunRow | None:
        """The run a key already started (waiting for one being created), or None."""
        pending = self._creating.get(key)
        if pending is None:
            row = await self._store.find_run(*key)
            if row is not None:
                return row
            pending = self._creating.get(key)  # created while the store was read
            if pending is None:
                return None
        return await self._store.get_run(await asyncio.shield(pending))


def check_same_request(run: RunRow, spec: RunSpec) -> None:
    """Refuse `spec` when it reuses the idempotency key of `run` for a different task or context."""
    try:
        stored = RunSpec.from_json(run.spec)
    except UnreadableRecord:
        return  # nothing to compare with; the run itself ends as not resumable, which attaching shows
    changed = [
        name
        for name, before, now in (("task", stored.task, spec.task), ("context", stored.context, spec.context))
        if before != now
    ]
    if changed:
        raise AlreadyExists(
            f"client_request_id {spec.client_request_id!r} already started run {run.run_id} with a different "
            f"{' and '.join(changed)}; send the same request again to attach to that run, or use a new "
            "client_request_id for a new run"
        )
