"""The load's provider: the tests' FakeOpenAI, streaming stamped tokens at a set rate or as fast as it can.

`python -m bench.fake` runs it in a process of its own and prints `READY <port>`. What to stream is read from
the request's user prompt, which carries the run's task; the load client writes a directive there
(`Directive.task()`), so each run chooses its own replies without any other channel to this process.

Each token's text starts with the wall clock (time.time_ns(), 19 digits) read just before the chunk is written,
so the client computes the relay latency (provider chunk written -> client received) on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bench.procs import announce_ready
from tests.fakes.providers import FakeOpenAI, Reply, _Stream

STAMP_DIGITS = 19
MIN_SIZE = STAMP_DIGITS + 1
# As fast as it can: this many chunks leave in one socket write, so the fake is not what limits a run.
FAST_BATCH = 64
_AGENTS = ("architect", "coder", "reviewer", "refiner", "tester", "documenter")
_DIRECTIVE = re.compile(r"\[bench ([^\]]*)\]")


@dataclass(frozen=True)
class Directive:
    """What every stage of one run streams: token counts per agent, rate (0: as fast as possible), size."""

    tokens: dict[str, int] = field(default_factory=dict)
    default_tokens: int = 1
    rate: float = 0.0
    size: int = MIN_SIZE
    hold: float = 0.0  # seconds to wait before the first token; < 0: until the client goes away

    def task(self) -> str:
        """The task text that carries this directive to the fake."""
        per_agent = ",".join(f"{a}={n}" for a, n in self.tokens.items())
        return (
            f"Benchmark run [bench default={self.default_tokens} tokens={per_agent} rate={self.rate} "
            f"size={self.size} hold={self.hold}]"
        )

    @classmethod
    def parse(cls, prompt: str) -> Directive:
        """Read the directive back from a prompt."""
        match = _DIRECTIVE.search(prompt)
        if match is None:
            return cls()
        kv = dict(part.split("=", 1) for part in match.group(1).split())
        tokens = {a: int(n) for a, n in (p.split("=") for p in kv.get("tokens", "").split(",") if p)}
        return cls(tokens, int(kv["default"]), float(kv["rate"]), int(kv["size"]), float(kv["hold"]))

    def count(self, agent: str) -> int:
        """Tokens the agent streams."""
        return self.tokens.get(agent, self.default_tokens)


@dataclass
class BenchReply(Reply):
    """A reply whose chunks are made when they are written."""

    directive: Directive = field(default_factory=Directive)
    count: int = 1


def stamped(size: int) -> str:
    """A token of `size` characters starting with the wall clock in nanoseconds."""
    return f"{time.time_ns():019d}".ljust(size, ".")


def _agent(body: dict[str, Any]) -> str:
    system = str(body["messages"][0]["content"])
    return next((a for a in _AGENTS if system.startswith(f"You are the {a.capitalize()}")), "architect")


def respond(body: dict[str, Any]) -> Reply:
    """The reply for one request: the directive in the prompt, for the agent the system prompt names."""
    directive = Directive.parse(str(body["messages"][-1]["content"]))
    count = directive.count(_agent(body))
    return BenchReply(chunks=[], output_tokens=count, input_tokens=count, directive=directive, count=count)


class BenchOpenAI(FakeOpenAI):
    """FakeOpenAI whose text chunks are stamped tokens, paced on an absolute schedule."""

    async def _write_reply(
        self, stream: _Stream, response: web.StreamResponse, body: dict[str, Any], reply: Reply
    ) -> None:
        assert isinstance(reply, BenchReply)
        d = reply.directive
        for event in self._preamble(stream, reply):
            await response.write(event)
        if d.hold < 0:
            await asyncio.Event().wait()  # until the client goes away (aiohttp cancels this handler)
        elif d.hold > 0:
            await asyncio.sleep(d.hold)
        if d.rate > 0:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(reply.count):
                # On a schedule, not a sleep per chunk: a late chunk does not push the later ones back.
                delay = start + i / d.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await response.write(self._text_event(stream, i, stamped(d.size)))
        else:
            for first in range(0, reply.count, FAST_BATCH):
                n = min(FAST_BATCH, reply.count - first)
                await response.write(b"".join(self._text_event(stream, first + i, stamped(d.size)) for i in range(n)))
        self.chunks_sent += reply.count
        for event in self._epilogue(stream, body, reply):
            await response.write(event)
        stream.finished = True


async def _serve() -> None:
    fake = BenchOpenAI(respond)
    await fake.start()
    announce_ready(int(fake.base_url.rsplit(":", 1)[1].split("/")[0]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main() -> None:
    """Serve until SIGTERM."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
