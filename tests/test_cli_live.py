"""The pretty view as a person sees it in a terminal: waits, retries and interruptions say so in place.

The CLI runs in a pseudo-terminal (tests/harness/terminal.py) against a real server whose provider is the fake
OpenAI, and the assertions read the emulated screen: what is on which row, what stayed, what went away.
"""

from __future__ import annotations

import re
import socket

from tests.fakes.providers import FakeOpenAI, Fault, Reply
from tests.harness.events import collect, kind
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory
from tests.harness.terminal import terminal

TASK = "Write a function that reverses a string"
# A coder whose second chunk ends mid-line, so that something arrives while a row is unfinished.
CODER_CHUNKS = ["File: src/rev.py\n```python\n", "def rev(s: str", ") -> str:\n", "    return s[::-1]\n", "```\n"]


async def test_a_retry_counts_down_in_place_and_says_nothing_was_discarded(make_server: ServerFactory) -> None:
    script = scripted(
        coder=[Reply(chunks=["x"], fault=Fault.http_status(503, retry_after=2)), Reply(chunks=CODER_CHUNKS)]
    )
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, provider_attempts=3)
        async with terminal(h.target, "run", TASK) as term:
            await term.wait_for(lambda s: "retrying in 2s" in s)
            await term.wait_for(lambda s: "retrying in 1s" in s and "retrying in 2s" not in s)
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 0
    [reset] = [line for line in lines if line.startswith("!! [2]")]
    assert reset.startswith("!! [2] attempt 2 in 2.0s: openai overloaded")
    assert "discarded" not in reset  # no token of that attempt was shown
    assert not any("retrying in" in line for line in lines), "the countdown goes away"
    coder = term.row_of("def rev(s: str) -> str:")
    assert lines[coder - 1 : coder + 2] == ["```python", "def rev(s: str) -> str:", "    return s[::-1]"]


async def test_a_reset_after_shown_text_says_it_is_discarded(make_server: ServerFactory) -> None:
    script = scripted(coder=[Reply(chunks=CODER_CHUNKS, fault=Fault.reset(after_chunks=2)), Reply(chunks=CODER_CHUNKS)])
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, provider_attempts=3, retry_backoff=0.01)
        async with terminal(h.target, "run", TASK) as term:
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 0
    reset = term.row_of("!! [2] attempt 2")
    assert lines[reset - 1] == "def rev(s: str", "the voided text stays above, ended on its own row"
    assert " ".join(lines[reset : reset + 2]).endswith("; the partial output above is discarded")


async def test_a_provider_stall_shows_the_wait_below_the_unfinished_row(make_server: ServerFactory) -> None:
    coder = Reply(chunks=CODER_CHUNKS, fault=Fault.stall(after_chunks=2, seconds=2.5))
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        h = await make_server(openai=fake, heartbeat_interval=0.2)
        async with terminal(h.target, "run", TASK) as term:
            during = await term.wait_for(lambda s: "waiting for the model (1s)" in s)
            code = await term.wait_exit()
    rows = during.splitlines()
    status = next(i for i, line in enumerate(rows) if "waiting for the model (1s)" in line)
    assert rows[status - 1] == "def rev(s: str", "the status line sits under the unfinished row"
    assert re.search(r"waiting for the model \(1s\) · \[2/5\] Coder · \d+s · \$0\.\d+", rows[status])
    lines = term.lines()
    assert code == 0
    assert "def rev(s: str) -> str:" in lines, "the text went on where it stopped"
    assert not any("waiting for the model" in line for line in lines)


async def test_ctrl_c_prints_on_its_own_row_and_the_text_goes_on_under_it(make_server: ServerFactory) -> None:
    coder, release = held(Reply(chunks=CODER_CHUNKS), after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            async with terminal(h.target, "run", TASK) as term:
                await term.wait_for(lambda s: s.endswith("def rev(s: str"))
                term.interrupt()
                code = await term.wait_exit()
        finally:
            release.set()
    lines = term.lines()
    assert code == 130
    note = term.row_of("cancelling run")
    assert re.fullmatch(r"cancelling run [0-9a-f-]{36} in 2s; Ctrl-C again to leave it running", lines[note])
    assert lines[note + 1] == "def rev(s: str", "the unfinished row is written again under the note"
    assert lines[note + 2].startswith("Run cancelled: cancelled by a client request")


async def test_a_second_ctrl_c_quits_and_leaves_the_run_going(make_server: ServerFactory) -> None:
    coder, release = held(Reply(chunks=CODER_CHUNKS), after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            async with terminal(h.target, "run", TASK, cols=160) as term:
                await term.wait_for(lambda s: s.endswith("def rev(s: str"))
                term.interrupt()
                await term.wait_for(lambda s: "Ctrl-C again" in s)
                term.interrupt()
                code = await term.wait_exit()
            release.set()
            hint = re.search(
                r"detached; the run goes on\. Follow it with: facilitair watch (\S+) --after (\d+)$", term.text()
            )
            assert hint is not None, term.text()
            rest = await collect(h.client.watch(hint.group(1), int(hint.group(2))))
        finally:
            release.set()
    assert code == 130
    assert [kind(e) for e in rest].count("run_cancelled") == 0
    assert kind(rest[-1]) == "run_completed", "the run went on without the CLI"
    assert rest[0].seq == int(hint.group(2)) + 1


async def test_an_unapproved_result_ends_in_the_warning_colour(make_server: ServerFactory) -> None:
    rejecting = Reply(
        chunks=['{"approved": false, "summary": "no", "issues": [{"severity": "major", "description": "x"}]}']
    )
    async with FakeOpenAI(scripted(reviewer=rejecting)) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--max-refinements", "1") as term:
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 0
    done = term.row_of("Run completed")
    assert ", review not approved: 4 files, 1 refinement, " in lines[done]
    assert term.colour_at(done, 0) == "brown"  # ANSI yellow
    assert "The last review did not approve the code." in lines
    assert "changes requested (1 issue)" in term.text()
    headers = [line for line in lines if re.search(r"\[\d/7\]", line)]
    assert [re.search(r"\[\d/7\] ([A-Za-z ()0-9]+?) ·", h).group(1) for h in headers] == [  # type: ignore[union-attr]
        "Refiner (round 1)",
        "Reviewer (round 1)",
        "Tester",
        "Documenter",
    ]
    assert default_replies()["tester"].chunks[1].strip() in term.text()


async def test_a_reconnect_is_one_line_that_updates_in_place(make_server: ServerFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{sock.getsockname()[1]}"
    coder, release = held(Reply(chunks=CODER_CHUNKS), after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake, listen=listen)
            async with terminal(listen, "run", TASK) as term:
                await term.wait_for(lambda s: s.endswith("def rev(s: str"))
                await h.stop()
                await term.wait_for(lambda s: re.search(r"reconnecting, attempt [3-9] \(\d+s\): ", s) is not None)
                during = term.lines()
                release.set()
                await make_server(openai=fake, listen=listen)  # the same database: the run resumes
                code = await term.wait_exit()
        finally:
            release.set()
    assert code == 0
    assert sum("reconnecting" in line for line in during) == 1, "the attempts update one line"
    assert during[-2:-1] == ["def rev(s: str"], "under the unfinished row"
    lines = term.lines()
    assert [line for line in lines if "connection lost" in line or "reconnect" in line] == [
        next(line for line in lines if line.startswith("reconnected after"))
    ]
    assert "(connection lost: " in term.text()
