"""The web page (issue 23) in a real headless Chromium, against real server processes and the fake vendor.

Each server is `python -m facilitair.server` with its HTTP gateway on a port the test chose (so a restarted
server comes back at the same address, as a real one does); the vendor is the fake OpenAI server in the test's
loop, and a reply that holds mid-stream pins the moment the test acts (kill the server, go offline, cancel).
The page is asserted on what it shows (each stage's text, byte for byte against the stored events) and on the
seqs it applied (window.__facilitair.appliedSeqs: every seq exactly once, in order).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import zipfile
from collections.abc import Sequence
from typing import Any

import pytest

from bench import page as page_bench
from facilitair.client import Client, RunEvent
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Fault, Reply
from tests.harness.browser import RunPage, chromium, need_chromium, new_context, open_run
from tests.harness.events import RunStream, collect, kind
from tests.harness.processes import clean_environment, free_port, server_processes
from tests.harness.scripts import held, scripted
from tests.harness.stores import Target

TASK = "Write a function that reverses a string"
MODEL = "openai:gpt-4.1-mini"
HANG_GUARD = 60.0
CODER = 2  # the Coder's stage when the first review approves
# The Coder's reply: several chunks a little apart, so the page sees the text grow step by step; non-ASCII
# text, to compare byte for byte after the browser's decoding.
CODER_CHUNKS = [
    "File: src/rev.py\n",
    "```python\n",
    "def rev(s: str) -> str:\n",
    '    """Reverse `s` (naïve ✓, 漢字)."""\n',
    "    # 🙂 emoji and a tab:\t end\n",
    "    return s[::-1]\n",
    "```\n",
]


def server_env(store: Target, fake: FakeOpenAI, **settings: str) -> tuple[dict[str, str], str]:
    """A server's environment with both ports fixed (a restart keeps its address), and the page's base URL."""
    http = free_port()
    given = {
        "FACILITAIR_LISTEN": f"127.0.0.1:{free_port()}",
        "FACILITAIR_HTTP_LISTEN": f"127.0.0.1:{http}",
        # No thinking or heartbeat events unless asked for: a run's log is then fully scripted.
        "FACILITAIR_THINKING_INTERVAL": "60",
        "FACILITAIR_HEARTBEAT_INTERVAL": "60",
        "FACILITAIR_MODEL": MODEL,
        "OPENAI_API_KEY": fake.api_key,
        "OPENAI_BASE_URL": fake.base_url,
        **store.environment(),
    }
    return clean_environment(**(given | settings)), f"http://127.0.0.1:{http}"


def coder_reply(chunks: Sequence[str] = CODER_CHUNKS, hold_after: int = 2) -> tuple[Reply, Any]:
    """The Coder's reply, held after `hold_after` chunks until the returned event is set."""
    return held(Reply(chunks=list(chunks), chunk_delay=0.1, input_tokens=240, output_tokens=42), after=hold_after)


def coder_streaming(event: RunEvent) -> bool:
    """The Coder's reply has begun."""
    return kind(event) == "token_delta" and event.token_delta.stage == CODER


def final_text(events: Sequence[RunEvent], stage: int) -> str:
    """A stage's text as stored: its token deltas after its last attempt_reset."""
    text = ""
    for e in events:
        if kind(e) == "attempt_reset" and e.attempt_reset.stage == stage:
            text = ""
        elif kind(e) == "token_delta" and e.token_delta.stage == stage:
            text += e.token_delta.text
    return text


async def stored_events(target: str, run_id: str) -> list[RunEvent]:
    """The run's whole stored log, read over gRPC."""
    async with Client(target) as client:
        return await collect(client.watch(run_id))


async def assert_shows_the_whole_run(tab: RunPage, events: Sequence[RunEvent]) -> None:
    """Every seq applied once, in order; every stage's text as stored, byte for byte."""
    assert await tab.applied() == list(range(1, events[-1].seq + 1))
    counters = await tab.counters()
    assert (counters["duplicates"], counters["gaps"]) == (0, 0)
    stages = sorted({e.stage_started.stage for e in events if kind(e) == "stage_started"})
    assert stages == [1, 2, 3, 4, 5]
    for stage in stages:
        assert (await tab.text(stage)).encode() == final_text(events, stage).encode()


@pytest.mark.both_stores
async def test_tokens_appear_as_the_provider_streams_them_and_end_byte_for_byte(store_target: Target) -> None:
    coder, release = coder_reply()
    # Two more holds, after 3 and 4 chunks: the page is seen at each step, so the text grows in at least three
    # steps while the stage runs whatever the load (paced chunks alone could reach the page as one).
    steps = (asyncio.Event(), asyncio.Event())
    coder = dataclasses.replace(coder, steps=((3, steps[0]), (4, steps[1])))
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                started = RunStream(client.collaborate(TASK))
                live = await started.until(coder_streaming)
                context = await new_context(browser)
                first, second = [await open_run(context, base, live.run_id) for _ in range(2)]
                for sent, released in ((2, release), (3, steps[0]), (4, steps[1])):
                    for tab in (first, second):  # mid-stage: the held reply's first chunks, and the stage not done
                        await tab.until_text(CODER, "".join(CODER_CHUNKS[:sent]))
                        section = tab.page.locator(f"section.stage[data-stage='{CODER}']")
                        assert await section.get_attribute("data-state") != "done"
                    released.set()
                events = await started.to_end(within=HANG_GUARD)
            for tab in (first, second):
                await tab.until_ended()
            await first.screenshot("run-view.png")
            # The same finished run on a phone-sized window in dark mode: replayed, and nothing wider than it.
            phone = await new_context(browser, viewport={"width": 390, "height": 844}, color_scheme="dark")
            small = await open_run(phone, base, live.run_id)
            await small.until_ended()
            overflow = await small.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            await small.screenshot("run-view-phone-dark.png")
            shown = [await tab.view_text() for tab in (first, second, small)]
            changes = await first.changes()
            # "Download all files": the link the page shows, fetched with the page's own cookies.
            link = await first.page.get_by_role("link", name="Download all files (zip)").get_attribute("href")
            download = await context.request.get(base + (link or ""))
            archive = zipfile.ZipFile(io.BytesIO(await download.body()))
            files = {name: archive.read(name).decode() for name in archive.namelist()}
            for tab in (first, second, small):
                await assert_shows_the_whole_run(tab, events)
    # The Coder's text grew in several steps while the stage ran: at least the three it was held at (the last
    # step may land with the stage's end, and tokens the server finds ready at once come coalesced, as one step).
    growing = [c["length"] for c in changes if c["stage"] == CODER and c["running"]]
    held_at = {len("".join(CODER_CHUNKS[:n])) for n in (2, 3, 4)}
    assert held_at <= set(growing), growing
    assert growing == sorted(set(growing))
    result = events[-1].run_completed.result
    assert files == {a.path: a.content for a in result.artifacts}
    assert "src/rev.py" in files
    assert shown[0] == shown[1] == shown[2]  # two live tabs and a replay show the run identically
    assert "Run completed" in shown[0]
    assert overflow <= 0


@pytest.mark.both_stores
async def test_a_killed_and_restarted_server_is_caught_up_with_every_seq_once(store_target: Target) -> None:
    coder, _release = coder_reply()
    # The restarted server asks the Coder again (a new attempt); that reply streams to the end.
    again = Reply(chunks=list(CODER_CHUNKS), input_tokens=240, output_tokens=42)
    async with FakeOpenAI(scripted(coder=[coder, again])) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                live = await RunStream(client.collaborate(TASK)).until(coder_streaming)
            tab = await open_run(await new_context(browser), base, live.run_id)
            await tab.until_text(CODER, "".join(CODER_CHUNKS[:2]))
            await server.kill()
            await tab.until_connection("reconnecting")
            await server.start()
            await tab.until_ended()
            events = await stored_events(server.target, live.run_id)
            counters = await tab.counters()
            await assert_shows_the_whole_run(tab, events)
    assert kind(events[-1]) == "run_completed"
    assert [kind(e) for e in events].count("attempt_reset") >= 1  # the Coder's attempt really was cut
    assert counters["reconnects"] >= 1


@pytest.mark.both_stores
async def test_a_browser_offline_for_a_while_is_caught_up_with_every_seq_once(store_target: Target) -> None:
    coder, release = coder_reply()
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                started = RunStream(client.collaborate(TASK))
                live = await started.until(coder_streaming)
                context = await new_context(browser)
                tab = await open_run(context, base, live.run_id)
                await tab.until_text(CODER, "".join(CODER_CHUNKS[:2]))
                await context.set_offline(True)
                await tab.until_connection("offline", "reconnecting")
                release.set()
                events = await started.to_end(within=HANG_GUARD)  # the whole run happens while offline
            assert len(await tab.applied()) < events[-1].seq
            await context.set_offline(False)
            await tab.until_ended()
            await assert_shows_the_whole_run(tab, events)


async def test_a_run_driven_by_replica_a_is_watched_through_replica_b(pg_url: str, tmp_path: Any) -> None:
    store = Target("postgresql", tmp_path / "unused.db", pg_url)
    coder, release = coder_reply()
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        env_a, _ = server_env(store, fake, FACILITAIR_REPLICA_ID="a")
        env_b, base_b = server_env(store, fake, FACILITAIR_REPLICA_ID="b")
        async with server_processes(env_a, env_b) as (a, b), chromium() as browser:
            await a.start()
            await b.start()
            async with Client(a.target) as on_a:
                started = RunStream(on_a.collaborate(TASK))
                live = await started.until(coder_streaming)
                assert (await on_a.get_run(live.run_id)).replica_id == "a"
                tab = await open_run(await new_context(browser), base_b, live.run_id)
                await tab.until_text(CODER, "".join(CODER_CHUNKS[:2]))
                release.set()
                events = await started.to_end(within=HANG_GUARD)
            await tab.until_ended()
            await assert_shows_the_whole_run(tab, events)
    assert [r["replica"] for r in a.records("run_created")] == ["a"]


HOSTILE = [
    "File: page.html\n```html\n",
    "<script>window.__pwned = 'script'</script>\n",
    '<img src="x" onerror="window.__pwned = \'img\'">\n',
    "<a href=\"javascript:window.__pwned = 'link'\">click me</a> [md](javascript:alert(1))\n",
    "```\n",
]


async def test_model_output_with_markup_is_shown_as_text_and_never_runs(store_target: Target) -> None:
    hostile_task = "Reverse <b>this</b> <script>window.__pwned = 'task'</script>"
    verdict_json = '{"approved": true, "summary": "<img src=x onerror=alert(1)>", "issues": []}'
    reviewer = Reply(chunks=[f"```json\n{verdict_json}\n```"])
    async with FakeOpenAI(scripted(coder=Reply(chunks=HOSTILE), reviewer=reviewer)) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                events = await collect(client.collaborate(hostile_task))
            context = await new_context(browser)
            tab = await open_run(context, base, events[0].run_id)
            dialogs: list[str] = []
            tab.page.on("dialog", lambda d: dialogs.append(d.message))
            await tab.until_ended()
            await tab.page.locator("li[data-path='page.html'] summary").click()  # open the file's view
            await tab.page.goto(base + "/")
            listed = await tab.page.locator(f"li[data-run='{events[0].run_id}'] .task").text_content()
            await tab.page.go_back()
            await tab.until_ended()
            pwned = await tab.page.evaluate("window.__pwned === undefined ? null : window.__pwned")
            markup = await tab.page.evaluate(
                "document.querySelectorAll('main script, main img, main iframe, main a[href^=\"javascript\"]').length"
            )
            task = await tab.page.locator(".task").first.text_content()
            file_text = await tab.page.locator("li[data-path='page.html'] pre.file").text_content()
            verdict = await tab.page.locator("section.stage[data-stage='3'] .verdict").text_content()
            await assert_shows_the_whole_run(tab, events)
    assert (pwned, markup, dialogs) == (None, 0, [])
    assert task == listed == hostile_task
    assert file_text is not None
    assert "<script>window.__pwned = 'script'</script>" in file_text
    assert verdict is not None
    assert "<img src=x onerror=alert(1)>" in verdict


KEYS = "alice:alice-key-0123456789,bob:bob-key-0123456789ab"


async def test_login_cookie_and_other_principals_runs(store_target: Target) -> None:
    async with FakeOpenAI(scripted()) as fake:
        env, base = server_env(store_target, fake, FACILITAIR_API_KEYS=KEYS)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            context = await new_context(browser)
            page = await context.new_page()
            await page.goto(base + "/")
            await page.locator("#key").fill("not-the-key-0123456789")
            await page.keyboard.press("Enter")
            await page.locator(".login .error").wait_for()
            refused = await page.locator(".login .error").text_content()
            cookies_after_refusal = await context.cookies()
            await page.locator("#key").fill("alice-key-0123456789")
            await page.keyboard.press("Enter")
            await page.locator("#task").wait_for()
            cookies = await context.cookies()
            script_sees = await page.evaluate("document.cookie")
            # Bob's run, started with his key over HTTP: Alice's page must not find it.
            bob = await context.request.post(
                base + "/v1/runs", data={"task": TASK}, headers={"Authorization": "Bearer bob-key-0123456789ab"}
            )
            assert bob.status == 201, await bob.text()
            bob_run = (await bob.json())["run"]["runId"]
            await page.goto(f"{base}/runs/{bob_run}")
            await page.locator(".run .error").wait_for()
            not_found = await page.locator(".run .error").text_content()
            # Alice starts a run from the form, with the keyboard (the CSRF header goes with it).
            await page.goto(base + "/")
            await page.locator("#task").fill(TASK)
            await page.locator("#task").press("Tab")
            await page.keyboard.press("Tab")
            await page.keyboard.press("Tab")
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/runs/*")
            tab = RunPage(page)
            await tab.until_ended()
            outcome = await page.locator(".result .outcome").text_content()
            # The session ends under an open page (the cookie gone, as when it expires): the list's next
            # refresh is refused, and the page asks for the key again.
            await page.locator("a[data-nav]", has_text="All runs").click()
            await page.locator(".runs li[data-run]").first.wait_for()
            await context.clear_cookies()
            await page.locator("#key").wait_for()
    assert refused == "Wrong key."
    assert cookies_after_refusal == []
    assert len(cookies) == 1
    assert (cookies[0]["httpOnly"], cookies[0]["sameSite"]) == (True, "Strict")
    assert cookies[0]["value"] not in script_sees
    assert not_found is not None
    assert "not found" in not_found
    assert outcome is not None
    assert outcome.startswith("Run completed")


@pytest.mark.both_stores
async def test_cancel_from_the_page_ends_the_run(store_target: Target) -> None:
    coder, _release = coder_reply()  # never released: only the cancel ends the run
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                live = await RunStream(client.collaborate(TASK)).until(coder_streaming)
                tab = await open_run(await new_context(browser), base, live.run_id)
                await tab.until_text(CODER, "".join(CODER_CHUNKS[:2]))
                await tab.page.get_by_role("button", name="Cancel run").click()
                await tab.until_ended()
                summary = await client.get_run(live.run_id)
                events = await collect(client.watch(live.run_id))
            state = await tab.page.locator(".run-head .state").text_content()
            outcome = await tab.page.locator(".result .outcome").text_content()
            applied = await tab.applied()
    assert summary.state == pb.RUN_STATE_CANCELLED
    assert kind(events[-1]) == "run_cancelled"
    assert state == "cancelled"
    assert outcome is not None
    assert outcome.startswith("Run cancelled")
    assert applied == list(range(1, events[-1].seq + 1))


async def test_waits_and_retries_say_so_while_nothing_streams(store_target: Target) -> None:
    overloaded = Reply(chunks=["x"], fault=Fault.http_status(503, retry_after=2))
    stalled = Reply(chunks=list(CODER_CHUNKS), fault=Fault.stall(after_chunks=2, seconds=2.5))
    async with FakeOpenAI(scripted(coder=[overloaded, stalled])) as fake:
        env, base = server_env(
            store_target, fake, FACILITAIR_PROVIDER_ATTEMPTS="3", FACILITAIR_HEARTBEAT_INTERVAL="0.2"
        )
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                live = await RunStream(client.collaborate(TASK)).until(lambda e: kind(e) == "stage_started")
                tab = await open_run(await new_context(browser), base, live.run_id)
                status = f"section.stage[data-stage='{CODER}'] .status"
                retrying = await tab.until(
                    "(s) => { const t = document.querySelector(s)?.textContent || ''; "
                    "return t.startsWith('retrying in') && t; }",
                    status,
                )
                waiting = await tab.until(
                    "(s) => { const t = document.querySelector(s)?.textContent || ''; "
                    "return t.startsWith('waiting for the model (') && t; }",
                    status,
                )
                await tab.until_ended()
                after = await tab.page.locator(status).text_content()
                notes = await tab.page.locator(f"section.stage[data-stage='{CODER}'] .notes").inner_text()
                text = await tab.text(CODER)
    assert retrying in ("retrying in 2s", "retrying in 1s")
    assert waiting in ("waiting for the model (0s)", "waiting for the model (1s)", "waiting for the model (2s)")
    assert after == ""
    assert "attempt 2 in 2.0s: openai overloaded" in notes
    assert text == "".join(CODER_CHUNKS)


async def test_the_runs_list_shows_states_as_they_change(store_target: Target) -> None:
    coder, release = coder_reply()
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            page = await (await new_context(browser)).new_page()
            await page.goto(base + "/")
            home = RunPage(page)
            empty = await home.until("() => document.querySelector('.runs')?.textContent")
            async with Client(server.target) as client:
                started = RunStream(client.collaborate(TASK))
                live = await started.until(coder_streaming)
                row = f"li[data-run='{live.run_id}']"
                running = await home.until("(row) => document.querySelector(row)?.dataset.state", row)
                await page.locator(f"{row} a").focus()  # a keyboard user on the row while its state changes
                release.set()
                await started.to_end(within=HANG_GUARD)
            done = await home.until(
                "(row) => document.querySelector(row)?.dataset.state === 'completed' && 'completed'", row
            )
            focused = await page.evaluate("document.activeElement?.closest('li')?.dataset.run")
            await page.keyboard.press("Enter")  # into the run, without reloading the page
            await home.until_ended()
            url = page.url
    assert empty == "No runs yet."
    assert (running, done) == ("running", "completed")
    assert focused == live.run_id  # the row was updated in place: the focus stayed on it
    assert url == f"{base}/runs/{live.run_id}"


async def test_the_latency_bench_measures_every_token() -> None:
    need_chromium()
    result = await page_bench.measure(tokens=30, rate=200.0, size=24, runs=1, hold=0.3)
    # Every stamped token was seen in the DOM (measure() checks the count); the figures exist, none is judged.
    assert result["tokens"] == 30
    assert set(result["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert all(value >= 0 for value in result["latency_ms"].values())
