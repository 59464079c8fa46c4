"""Changes proposed for files outside the harness, applied to the server process only when asked (`--try`).

They let the harness measure a proposal before it is made. `multirow`, `switch`, `rawsse` and `gc` were then
made the server's own behaviour (store/sqlite.py, providers/openai_provider.py, server.tune_runtime), so
applying them now changes nothing material; they stay so that the README's "before" column can be compared.
`uvloop` was not adopted. The default run measures the code as it is.

- `multirow`: SqliteStore.write_batch writes events, run rows and checkpoints with one multi-row INSERT per
  300 rows instead of `executemany`, which runs one sqlite3_step per row and releases and re-takes the GIL
  around each: while the event loop thread is busy every re-take waits up to the switch interval (5 ms), so a
  commit of n rows took up to n x 5 ms, and every watcher waited for it.
- `switch`: sys.setswitchinterval(0.001), so the writer thread waits at most 1 ms (not 5) for the GIL each time
  the loop thread is busy.
- `rawsse`: OpenAIProvider.stream reads the SSE lines of `with_streaming_response` and parses each chunk with
  json.loads, instead of iterating the SDK's typed stream, which builds a pydantic-style model per chunk
  (`construct_type`, the largest single cost in the server's profile). Same request path (auth, headers,
  status errors); only the per-chunk parsing changes.
- `uvloop`: the server's event loop is uvloop's (libuv) instead of asyncio's default; grpc.aio and httpx both
  run on it. Needs `pip install uvloop`.
- `gc`: after start-up objects are frozen out of the cyclic GC (gc.freeze()) and the young generation is
  collected every 50,000 allocations instead of 700: with hundreds of runs a full collection stopped the loop
  for 100-200 ms, and young ones for 5-10 ms several times a second.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import sys
from collections.abc import AsyncGenerator
from typing import Any

import openai

from facilitair.server.providers import openai_provider
from facilitair.server.providers.base import CompletionRequest, StreamEnd, broken
from facilitair.server.store import sqlite as sqlite_store
from facilitair.server.store.base import Batch

ROWS_PER_INSERT = 300  # 900 parameters per statement; SQLite allows 32766
PATCHES = ("multirow", "switch", "rawsse", "uvloop", "gc")


def _insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple[object, ...]], tail: str = "") -> None:
    """`head VALUES (..),(..) tail` over at most ROWS_PER_INSERT rows per statement."""
    if not rows:
        return
    one = "(" + ",".join("?" * len(rows[0])) + ")"
    for i in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[i : i + ROWS_PER_INSERT]
        conn.execute(f"{head} VALUES {','.join([one] * len(chunk))} {tail}", [v for row in chunk for v in row])


def _multirow() -> None:
    async def write_batch(self: sqlite_store.SqliteStore, batch: Batch) -> None:
        def write() -> None:
            conn = self._w()
            conn.execute("BEGIN IMMEDIATE")
            try:
                _insert_rows(
                    conn,
                    f"INSERT INTO runs ({sqlite_store._RUN_COLUMNS})",
                    [
                        (r.run_id, r.principal, r.client_request_id, r.state, r.created_at, r.updated_at,
                         r.finished_at, r.summary, r.spec)
                        for r in batch.runs
                    ],
                    "ON CONFLICT(run_id) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at, "
                    "finished_at=excluded.finished_at, summary=excluded.summary",
                )  # fmt: skip
                _insert_rows(
                    conn, "INSERT INTO events (run_id, seq, data)", [(e.run_id, e.seq, e.data) for e in batch.events]
                )
                _insert_rows(
                    conn,
                    "INSERT OR REPLACE INTO checkpoints (run_id, stage, data)",
                    [(c.run_id, c.stage, c.data) for c in batch.checkpoints],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._on(self._writer_thread, write)

    sqlite_store.SqliteStore.write_batch = write_batch  # type: ignore[method-assign]


async def _raw_stream(
    self: openai_provider.OpenAIProvider, request: CompletionRequest
) -> AsyncGenerator[str | StreamEnd, None]:
    """OpenAIProvider.stream, parsing the SSE lines itself."""
    extra: dict[str, Any] = {self._max_tokens_param: request.max_tokens}
    if request.temperature is not None:
        extra["temperature"] = request.temperature
    if request.timeout is not None:
        extra["timeout"] = request.timeout
    opened = self._client.chat.completions.with_streaming_response.create(
        model=request.model,
        messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}],
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    try:
        response = await opened.__aenter__()
    except Exception as exc:  # noqa: BLE001 - classified, as OpenAIProvider does
        raise self._error(exc, request.model) from None
    finish: str | None = None
    usage: dict[str, Any] | None = None
    try:
        async for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise openai.APIError("error event", response.http_response.request, body=chunk)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text
                if choice.get("finish_reason") is not None:
                    finish = choice["finish_reason"]
    except Exception as exc:  # noqa: BLE001 - classified, as OpenAIProvider does
        raise self._error(exc, request.model) from None
    finally:
        await opened.__aexit__(None, None, None)
    if finish is None:
        raise broken(self.name, request.model)
    if usage is None:
        yield StreamEnd(0, 0, finish, usage_reported=False)
    else:
        yield StreamEnd(usage["prompt_tokens"], usage["completion_tokens"], finish)


def apply(names: list[str]) -> None:
    """Apply the named patches to this process."""
    for name in names:
        if name == "multirow":
            _multirow()
        elif name == "switch":
            sys.setswitchinterval(0.001)
        elif name == "uvloop":
            import uvloop  # noqa: PLC0415 - optional, only for this patch

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        elif name == "gc":
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
        elif name == "rawsse":
            openai_provider.OpenAIProvider.stream = _raw_stream  # type: ignore[method-assign]
        else:
            raise ValueError(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
