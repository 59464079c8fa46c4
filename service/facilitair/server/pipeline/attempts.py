"""One stage's attempts: retries, fallback along the agent's model list, the run's deadline and budgets.

A retryable failure (429, 5xx, 529, connection, timeout, a stream that broke or ended without its
terminal event) is retried with jittered backoff, or after the provider's `retry-after`, bounded
in attempts per model and in total waiting. When a model is exhausted (or fails in a way retrying
cannot fix) the next model of the list takes over. Every new attempt is announced by an
`attempt_reset` (the stage's text so far is void), a fallback also by `model_fallback`.

Before a model is first asked, the run's response cache (cache.py) is looked up: a hit answers the stage with
no provider call and at no cost (a `cache_hit` event, then the stored text as token deltas); an attempt that
ended with its StreamEnd is stored there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from facilitair.server import metrics
from facilitair.server.domain import ModelRef, UsageTotals
from facilitair.server.errors import FacilitairError, ProviderError, ProviderFailure, RunDeadlineExceeded
from facilitair.server.events.recorder import RunRecorder
from facilitair.server.pipeline.budget import Budget
from facilitair.server.pipeline.cache import HIT_EVENTS, ResponseCache, chunks
from facilitair.server.pipeline.context import ContextTooSmall
from facilitair.server.pipeline.tokens import estimate_tokens, request_tokens
from facilitair.server.providers import CompletionRequest, Provider, ProviderRegistry, StreamEnd, UsageReport
from facilitair.server.retrying import RetryPolicy
from facilitair.server.telemetry import (
    NO_STAGE,
    NO_STRETCH,
    AttemptRequest,
    AttemptTrace,
    AttemptUsage,
    StageTrace,
    StretchTrace,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptPolicy:
    """How hard a stage tries: attempts per model, total retry wait, the longest wait for a byte.

    The defaults (Settings has the same) wait 2, 4, 8 and 16 s, each jittered x0.5-1.5, between five
    attempts: 15-45 s in all, enough to ride out a provider that restarts in several seconds.
    """

    attempts_per_model: int = 5
    retry_wait_max: float = 60.0
    provider_timeout: float = 300.0
    backoff_base: float = 2.0

    @property
    def retry(self) -> RetryPolicy:
        """The waits between one model's attempts: exponential from the base, at most 16 bases, x0.5-1.5."""
        return RetryPolicy(
            base=self.backoff_base,
            cap=16 * self.backoff_base,
            attempts=self.attempts_per_model,
            jitter=0.5,
            deadline=self.retry_wait_max,
        )

    def backoff_range(self, tries: int) -> tuple[float, float]:
        """The least and the most the wait after failure number `tries` (1-based) may be."""
        return self.retry.delay_range(tries)


def _log_fields(stage: int, model: ModelRef, host: str, exc: ProviderError) -> dict[str, object]:
    """What the server log says of a provider failure: never the vendor's text or body (they may echo keys)."""
    return {
        "stage": stage,
        "provider": model.provider,
        "model": model.model,
        "host": host,
        "http_status": exc.http_status,
        "error": exc.kind.name.lower(),
        "cause": exc.cause,
    }


def _name_agent(exc: ProviderError, agent: str) -> None:
    """Fill in the agent a provider's context-window hint is about (the provider cannot know it; we do)."""
    exc.public_message = (
        exc.public_message.replace("[agents.<agent>]", f"[agents.{agent}]")
        + f"; with [agents.{agent}] context_window set to the window the model is served with, the server fits "
        "each request into it"
    )
    exc.args = (exc.public_message,)


@dataclass(frozen=True, slots=True)
class CutOff:
    """What an attempt that did not finish consumed: as its provider reported it, else estimated."""

    model: ModelRef
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    @classmethod
    def of(cls, model: ModelRef, request: CompletionRequest, report: UsageReport | None, text: str) -> CutOff:
        """The attempt's usage: the provider's report where there is one, an estimate of what was sent and received
        where not."""
        input_tokens = report.input_tokens if report is not None else None
        output_tokens = report.output_tokens if report is not None else None
        return cls(
            model,
            input_tokens if input_tokens is not None else request_tokens(request.system, request.prompt),
            output_tokens if output_tokens is not None else estimate_tokens(text),
            cache_read_tokens=report.cache_read_tokens if report is not None else 0,
            cache_write_tokens=report.cache_write_tokens if report is not None else 0,
            estimated=input_tokens is None or output_tokens is None,
        )


@dataclass(frozen=True, slots=True)
class StageResult:
    """A stage's output: its text, the provider's end marker, and the model that produced it."""

    text: str
    end: StreamEnd
    model: ModelRef
    cached: bool = False  # answered from the response cache: no provider was asked


class StageRunner:
    """Runs the attempts of one stage at a time for a run."""

    def __init__(
        self,
        rec: RunRecorder,
        providers: ProviderRegistry,
        policy: AttemptPolicy,
        budget: Budget,
        deadline: float,
        *,
        cache: ResponseCache | None = None,
        trace: StretchTrace = NO_STRETCH,
    ) -> None:
        self.rec = rec
        self.cache = cache
        self.trace = trace  # the run's stretch on this replica: the pipeline begins each stage's span in it
        self.providers = providers
        self.policy = policy
        self.budget = budget
        self.deadline = deadline  # time.monotonic() value past which the run has no time left
        # The attempts of the current stage that were cut off after the provider began to answer: paid for,
        # though their text is void. The pipeline counts them when the stage ends, however it ends.
        self.cut_offs: list[CutOff] = []
        self._looked_up: set[ModelRef] = set()  # the models of the current stage the cache was looked up for

    def time_left(self) -> float:
        """Seconds until the run's deadline; RunDeadlineExceeded when there are none."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RunDeadlineExceeded("the run has used all the time the server allows (FACILITAIR_RUN_TIMEOUT)")
        return left

    async def run(
        self,
        stage: int,
        chain: list[ModelRef],
        make_request: Callable[[ModelRef, float], CompletionRequest],
        attempt: int,
        *,
        agent: str,
        span: StageTrace = NO_STAGE,
    ) -> StageResult:
        """Try the models of `chain` in order until one streams the stage to its end.

        `make_request` builds the request for a model, or raises ContextTooSmall when the stage cannot fit
        that model's context window: the next model of the chain is then tried, as after a failure.
        """
        last_error: FacilitairError | None = None
        failure: dict[str, object] = {}  # the last failure's fields for the log
        self.cut_offs, self._looked_up = [], set()
        for index, model in enumerate(chain):
            if last_error is not None:
                attempt += 1
                log.warning("provider_fallback", to_model=str(model), **failure)
                self.rec.model_fallback(stage, chain[index - 1], model, last_error.public_message)
                self.rec.attempt_reset(stage, attempt, f"falling back to {model}", model, 0.0)
            provider = self.providers.get(model.provider)
            retry = self.policy.retry.start()
            while True:
                if last_error is not None:
                    # A retry or a fallback asks the provider again only once its attempt_reset is stored: while
                    # the store cannot write, the run waits here (and is interrupted after the grace) instead of
                    # paying for an attempt that may have to be made again after the recovery.
                    await self.rec.durable()
                try:
                    request = make_request(model, min(self.policy.provider_timeout, self.time_left()))
                except ContextTooSmall as exc:
                    failure = {"stage": stage, "provider": model.provider, "model": model.model, "error": "context"}
                    log.warning("stage_does_not_fit_context_window", **failure)
                    last_error = exc
                    break
                key = self.cache.key(model.provider, provider.host, request) if self.cache is not None else ""
                if (hit := await self._from_cache(stage, model, key)) is not None:
                    return hit
                limit = self.budget.char_limit(self.rec.usage, model, len(request.system) + len(request.prompt))
                if limit <= 0:
                    raise self.budget.crossed(stage, self.rec.usage)
                try:
                    text, end = await self._stream(provider, model, request, stage, limit, span=span)
                    if self.cache is not None:  # only here: the attempt ended with its StreamEnd
                        await self.cache.save(key, model, stage, text, end)
                    return StageResult(text, end, model)
                except ProviderError as exc:
                    if exc.kind is ProviderFailure.CONTEXT_EXCEEDED:
                        _name_agent(exc, agent)
                    metrics.PROVIDER_ERRORS.labels(model.provider, exc.kind.name.lower()).inc()
                    failure = _log_fields(stage, model, provider.host, exc)
                    log.warning("provider_attempt_failed", attempt=attempt, retryable=exc.retryable, **failure)
                    last_error = exc
                    if not exc.retryable or not retry.failed(exc.retry_after) or retry.delay >= self.time_left():
                        break
                    delay = retry.delay
                    attempt += 1
                    log.info("provider_retry", attempt=attempt, delay=round(delay, 3), **failure)
                    self.rec.attempt_reset(stage, attempt, exc.public_message, model, delay)
                    await asyncio.sleep(delay)
        assert last_error is not None, "a model list is never empty"
        log.warning("provider_failed", models_tried=len(chain), **failure)
        raise last_error

    async def _from_cache(self, stage: int, model: ModelRef, key: str) -> StageResult | None:
        """The stage answered from the cache, its events emitted; None on a miss.

        The cache is looked up once per model of the stage, before its first attempt (not before its retries).
        """
        if self.cache is None or model in self._looked_up:
            return None
        self._looked_up.add(model)
        entry = await self.cache.lookup(key, model)
        if entry is None:
            return None
        saved = UsageTotals(entry.input_tokens, entry.output_tokens, entry.cost_usd)
        self.rec.cache_hit(stage, model, entry.run_id, entry.stage, saved)
        for piece in chunks(entry.text, HIT_EVENTS):
            self.rec.token(stage, piece)
        # Nothing was sent or received: zero tokens, reported, so the stage costs nothing and is not estimated.
        return StageResult(entry.text, StreamEnd(0, 0, entry.finish_reason), model, cached=True)

    async def _stream(
        self,
        provider: Provider,
        model: ModelRef,
        request: CompletionRequest,
        stage: int,
        limit: float,
        *,
        span: StageTrace = NO_STAGE,
    ) -> tuple[str, StreamEnd]:
        """Relay one attempt's tokens as they arrive; stop it if it would cross a budget.

        An attempt that ends any other way than with its StreamEnd (a failure, a budget, a cancel) after the
        provider began to answer is kept in `cut_offs`: its tokens were paid for.
        """
        parts: list[str] = []
        end: StreamEnd | None = None
        report: UsageReport | None = None
        token = self.rec.token
        chars = 0
        self.rec.waiting(stage)
        traced = span.attempt(_traced_request(model, provider.host, request))
        asked = time.monotonic()
        try:
            async with contextlib.aclosing(provider.stream(request)) as stream:
                async for item in stream:
                    if type(item) is str:
                        if not parts:
                            metrics.FIRST_TOKEN.labels(provider.name).observe(time.monotonic() - asked)
                            traced.first_chunk()
                        parts.append(item)
                        token(stage, item)
                        chars += len(item)
                        if chars > limit:
                            raise self.budget.crossed(stage, self.rec.usage)
                    elif isinstance(item, StreamEnd):
                        end = item
                    elif isinstance(item, UsageReport):
                        report = item
        except BaseException as exc:
            # Nothing answered and nothing reported (a refused request, a connection that never opened): no
            # evidence the provider took the prompt, so nothing is counted.
            if parts or report is not None:
                self.cut_offs.append(CutOff.of(model, request, report, "".join(parts)))
            _end_failed(traced, exc, report)
            raise
        finally:
            self.rec.answered()
        assert end is not None, "providers end every successful stream with StreamEnd"
        text = "".join(parts)
        _end_clean(traced, end, text)
        return text, end


# -- telemetry: one call when an attempt begins and one when it ends, from what the attempt totals anyway ------------


def _traced_request(model: ModelRef, host: str, request: CompletionRequest) -> AttemptRequest:
    return AttemptRequest(
        model.provider, host, request.model, request.max_tokens, request.temperature, request.system, request.prompt
    )


def _end_clean(traced: AttemptTrace, end: StreamEnd, text: str) -> None:
    usage = AttemptUsage(end.input_tokens, end.output_tokens, end.cache_read_tokens, end.cache_write_tokens)
    traced.end(
        usage if end.usage_reported else None,
        response_model=end.response_model,
        finish_reason=end.finish_reason,
        output=text,
    )


def _end_failed(traced: AttemptTrace, exc: BaseException, report: UsageReport | None) -> None:
    usage = None
    if report is not None:
        usage = AttemptUsage(
            report.input_tokens, report.output_tokens, report.cache_read_tokens, report.cache_write_tokens
        )
    traced.end(usage, error=error_type(exc))


def error_type(exc: BaseException) -> str:
    """The error.type of a failed attempt or stage: the provider's failure kind, the domain's reason, or the class."""
    if isinstance(exc, ProviderError):
        return exc.kind.name.lower()
    if isinstance(exc, FacilitairError):
        return exc.reason.value.lower()
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return type(exc).__qualname__
