"""Fake OpenAI and Anthropic HTTP servers that speak each vendor's streaming wire format.

The fakes run on 127.0.0.1 inside the caller's event loop, so the official SDKs can be pointed at them with
``base_url`` and exercised unchanged: their SSE parsers, retries, timeouts and connection handling all run for
real. Each request is answered from a script of `Reply` objects (or a responder function), and a `Fault` on a
reply makes it fail the way the real vendors fail: an HTTP error status, an error event inside the stream, a TCP
reset, a stall, a clean end without the terminal event, or a chunk of the wrong shape. By default a fake also
closes each streamed connection that its headers call keep-alive, as real servers do; it can stop listening for
a while (`stop_listening` / `listen_again`) and refuse requests past a context window.

The bytes on the wire follow each vendor's documented streaming format (checked against openai 3.54 and
anthropic 2.12), "What real servers do" included. This module gathers the package's public names:
`tests.fakes.faults` (Reply, Fault), `tests.fakes.server` (the shared server), `tests.fakes.openai` and
`tests.fakes.anthropic` (the vendors).
"""

from __future__ import annotations

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.faults import Fault, FaultKind, Reply, Responder
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import FakeProvider, _Stream

__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeProvider", "Fault", "FaultKind", "Reply", "Responder", "_Stream"]
