"""Prometheus metrics, served on --metrics-listen (FACILITAIR_METRICS_LISTEN).

Counted per batch or per stage wherever possible, never with a lock taken per token.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RUNS_FINISHED = Counter("facilitair_runs_finished_total", "Runs that ended, by state", ["state"])
RUNS_ACTIVE = Gauge("facilitair_runs_active", "Runs in flight in this process")
WATCHERS_ACTIVE = Gauge("facilitair_watchers_active", "Open Collaborate, WatchRun and HTTP event streams")
EVENTS_COMMITTED = Counter("facilitair_events_committed_total", "Events made durable, by payload", ["kind"])
MESSAGES_SENT = Counter("facilitair_messages_sent_total", "Event messages sent to clients", ["rpc"])
FIRST_TOKEN = Histogram(
    "facilitair_provider_first_token_seconds",
    "Time from asking a model to its first token",
    ["provider"],
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
PROVIDER_ERRORS = Counter("facilitair_provider_errors_total", "Failed provider attempts", ["provider", "kind"])
STAGE_SECONDS = Histogram(
    "facilitair_stage_seconds", "Wall time of completed stages", ["agent"], buckets=(1, 5, 15, 30, 60, 120, 300, 600)
)
PROVIDER_TOKENS = Counter("facilitair_provider_tokens_total", "Tokens reported by providers", ["provider", "direction"])
CACHE_HITS = Counter("facilitair_cache_hits_total", "Stages answered from the response cache", ["provider"])
CACHE_MISSES = Counter("facilitair_cache_misses_total", "Response cache look-ups that found nothing", ["provider"])
COST = Counter("facilitair_cost_usd_total", "Cost of reported usage with a known price, USD", ["provider"])
EVENT_LOOP_LAG = Histogram(
    "facilitair_event_loop_lag_seconds",
    "How late the event loop woke a task that asked to wake, measured every 0.1 s",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

WEBHOOK_ATTEMPTS = Counter(
    "facilitair_webhook_attempts_total",
    "Webhook delivery attempts, by outcome (delivered, gone, failed, refused)",
    ["outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "facilitair_webhook_deliveries_total", "Webhook deliveries that ended, by state (delivered, failed, disabled)",
    ["state"],
)

def count_events(kinds: Tally[str]) -> None:
    """Add one batch's events by payload kind."""
    for kind, n in kinds.items():
        EVENTS_COMMITTED.labels(kind).inc(n)


class MetricsServer:
    """The /metrics HTTP endpoint on its own thread."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving and join the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
