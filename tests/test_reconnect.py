"""A stream whose server goes away: the client says what happened in its own words and tries again at least every
2 s, so a restarted server is noticed soon after it is back (not after gRPC's growing connection backoff)."""

from __future__ import annotations

import asyncio

from facilitair.client import Client, FacilitairError, RunEvent
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import kind
from tests.harness.processes import free_port
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory

HANG_GUARD = 60.0
ATTEMPTS = 7  # past the point where the backoff would double beyond 2 s


async def test_reconnecting_waits_at_most_2s_and_says_why_in_our_words(make_server: ServerFactory) -> None:
    listen = f"127.0.0.1:{free_port()}"
    coder, release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake, listen=listen)
            attempts: list[tuple[int, float, str]] = []
            enough = asyncio.Event()

            def reconnecting(attempt: int, delay: float, error: FacilitairError) -> None:
                attempts.append((attempt, delay, error.message))
                if attempt >= ATTEMPTS:
                    enough.set()

            events: list[RunEvent] = []
            streaming = asyncio.Event()
            async with Client(listen, reconnect_timeout=HANG_GUARD) as client:
                client.on_reconnect = reconnecting

                async def follow() -> None:
                    async for event in client.collaborate("Write a function that reverses a string"):
                        events.append(event)
                        if kind(event) == "token_delta" and event.token_delta.stage == 2:
                            streaming.set()

                following = asyncio.create_task(follow())
                async with asyncio.timeout(HANG_GUARD):
                    await streaming.wait()
                    await h.stop()
                    await enough.wait()
                release.set()
                await make_server(openai=fake, listen=listen)  # the same store: the run resumes
                await asyncio.wait_for(following, HANG_GUARD)
        finally:
            release.set()
    assert [a for a, _, _ in attempts] == list(range(1, len(attempts) + 1))
    assert max(delay for _, delay, _ in attempts) <= 2.0, attempts
    first, *rest = [message for _, _, message in attempts]
    assert first == f"the server at {listen} closed the connection (it is stopping or restarting)"
    assert set(rest[: ATTEMPTS - 1]) == {f"nothing listens at {listen} (connection refused)"}
    assert kind(events[-1]) == "run_completed"
    assert [e.seq for e in events] == sorted({e.seq for e in events}), "no event twice, in order"
