"""Whether the store takes writes now, as the event log's writer finds out; listeners hear every change.

A store that cannot write (disk full, read-only, database gone) is one condition with one plain cause in the
log, said once when it starts and once when it ends, with a reminder while it lasts: not one traceback per
retry that buries the cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# While the store cannot write, the log says so again this often.
REMIND_EVERY = 30.0


class StoreHealth:
    """The store's ability to write, with the cause and the time of the current outage."""

    def __init__(self) -> None:
        self.healthy = True
        self.cause = ""
        self._since = 0.0
        self._reminded = 0.0
        self._listeners: list[Callable[[bool], None]] = []

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(healthy)` at every change from now on."""
        self._listeners.append(listener)

    @property
    def outage_seconds(self) -> float:
        """How long the store has not been able to write (0 while it can)."""
        return 0.0 if self.healthy else time.monotonic() - self._since

    def failed(self, cause: str) -> None:
        """A write failed for `cause` (plain words, no paths or secrets)."""
        now = time.monotonic()
        if self.healthy:
            self.healthy = False
            self.cause = cause
            self._since = self._reminded = now
            log.error("event_store_unavailable", cause=cause)
            self._tell(False)
        elif now - self._reminded >= REMIND_EVERY:
            self._reminded = now
            log.warning("event_store_still_unavailable", cause=cause, seconds=round(now - self._since, 1))

    def succeeded(self) -> None:
        """A write went through."""
        if not self.healthy:
            seconds = round(self.outage_seconds, 3)
            self.healthy = True
            self.cause = ""
            log.info("event_store_recovered", seconds=seconds)
            self._tell(True)

    def _tell(self, healthy: bool) -> None:
        for listener in list(self._listeners):
            listener(healthy)
