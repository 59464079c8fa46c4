"""The response cache: a provider's clean answer reused when the same caller sends the exact same request again.

Exact match only. The key is a SHA-256 of the request as it goes to the provider (the provider's name and
endpoint, the model, the system prompt and user message, every parameter of CompletionRequest but its
client-side timeout) together with the prompt templates' version and the caller (principal): one caller
never reads another's answers. Entries live in the run store (the `response_cache` table of both stores),
are written only for attempts that ended with their StreamEnd, and are expired by retention.

How a run uses it is its CacheMode (CollaborateRequest.cache, else --cache-default): read-write reads and
writes, read-only never writes, refresh never reads but writes. The cache helps; it never fails a run: a
store that cannot answer within CACHE_TIMEOUT is a miss, a write that fails is logged and forgotten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json

import structlog

from facilitair.server import metrics
from facilitair.server.domain import CacheMode, ModelRef
from facilitair.server.pipeline.prompts import TEMPLATES_VERSION
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import CompletionRequest, StreamEnd
from facilitair.server.store.base import CacheEntry, EventStore

log = structlog.get_logger(__name__)

# The layout of the key's document; raise it when that layout changes, so old entries are never misread.
KEY_VERSION = 1
# The longest a look-up or a write may wait for the store: a slow store makes a miss, never a stalled stage.
CACHE_TIMEOUT = 10.0
# A hit's stored text goes out in at most this many token_delta events, however long it is, each of at least
# HIT_MIN_CHARS characters (a short answer goes out in one): few messages, and a client still sees it stream.
HIT_EVENTS = 16
HIT_MIN_CHARS = 512
# CompletionRequest's fields that are not sent to the model: how long we wait is not part of the answer.
_NOT_IN_KEY = frozenset({"timeout"})


def cache_key(
    principal: str, provider: str, endpoint: str, request: CompletionRequest, templates_version: int = TEMPLATES_VERSION
) -> str:
    """The key of `request` sent to `provider` at `endpoint` on behalf of `principal` (hex SHA-256).

    Every field of CompletionRequest is in it but those in _NOT_IN_KEY, so a parameter added to the request
    is part of the key without a change here.
    """
    params = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name not in _NOT_IN_KEY}
    document = [KEY_VERSION, principal, provider, endpoint, templates_version, sorted(params.items())]
    return hashlib.sha256(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


class ResponseCache:
    """One run's use of the response cache: look a request up, store a clean answer."""

    def __init__(self, store: EventStore, mode: CacheMode, *, principal: str, run_id: str, prices: PriceTable) -> None:
        self.mode = mode
        self._store = store
        self._principal = principal
        self._run_id = run_id
        self._prices = prices

    def key(self, provider: str, endpoint: str, request: CompletionRequest) -> str:
        """The key of `request` for this run's caller."""
        return cache_key(self._principal, provider, endpoint, request)

    async def lookup(self, key: str, model: ModelRef) -> CacheEntry | None:
        """The stored answer for `key` when the mode reads; None (a miss) when there is none or the store is slow."""
        if not self.mode.reads:
            return None
        try:
            entry = await asyncio.wait_for(self._store.cache_get(key), CACHE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the cache never fails a run: any failure to read is a miss
            log.warning("response_cache_read_failed", error=type(exc).__name__, model=str(model))
            entry = None
        if entry is None or entry.principal != self._principal:
            metrics.CACHE_MISSES.labels(model.provider).inc()
            return None
        metrics.CACHE_HITS.labels(model.provider).inc()
        return entry

    async def save(self, key: str, model: ModelRef, stage: int, text: str, end: StreamEnd) -> None:
        """Store an attempt's answer (it ended with `end`) when the mode writes."""
        if not self.mode.writes:
            return
        entry = CacheEntry(
            key=key,
            principal=self._principal,
            text=text,
            finish_reason=end.finish_reason,
            input_tokens=end.input_tokens,
            output_tokens=end.output_tokens,
            cost_usd=self._prices.usage_of(model, end).cost_usd,
            run_id=self._run_id,
            stage=stage,
        )
        try:
            await asyncio.wait_for(self._store.cache_put(entry), CACHE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the answer is the run's either way; only its reuse is lost
            log.warning("response_cache_write_failed", error=type(exc).__name__, model=str(model))


def chunks(text: str, most: int, least: int = HIT_MIN_CHARS) -> list[str]:
    """`text` in at most `most` pieces of equal length (the last shorter) of at least `least` characters but the
    last: a hit's token_delta events."""
    size = max(-(-len(text) // most), least, 1)
    return [text[i : i + size] for i in range(0, len(text), size)]
