"""The web page shows the Test run step (issue 24) in a real headless Chromium, the tests run in the real sandbox.

A real server process with the sandbox on (bubblewrap) and the fake vendor behind the official SDK: the Coder's
first code fails the Tester's test, the Refiner fixes it, and the page shows both Test run steps (where the tests
ran, their output, the counts, the failure's name and message), the plan's Test run step and the result's note.
The page is asserted on what it shows against the stored events; and a kind of event it does not know (one a
newer server would send) is skipped while the rest of the run is still shown.
"""

from __future__ import annotations

import json
from typing import Any

from facilitair.client import Client
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.browser import chromium, new_context, open_run
from tests.harness.events import collect, kind, of_kind
from tests.harness.processes import clean_environment, free_port, server_processes
from tests.harness.sandbox import require_bwrap
from tests.harness.scripts import scripted
from tests.harness.stores import Target

TASK = "Write a function that reverses a string"
MODEL = "openai:gpt-4.1-mini"
# The Coder's first code does not reverse: the Tester's default test fails on it; the Refiner's default fixes it.
BUGGY = Reply(chunks=["File: src/rev.py\n```python\n", "def rev(s: str) -> str:\n", "    return s\n", "```\n"])


def server_env(store: Target, base_url: str, api_key: str) -> tuple[dict[str, str], str]:
    """A server with the sandbox on and its HTTP gateway on a port of the test's; the page's base URL."""
    http = free_port()
    given = {
        "FACILITAIR_LISTEN": f"127.0.0.1:{free_port()}",
        "FACILITAIR_HTTP_LISTEN": f"127.0.0.1:{http}",
        "FACILITAIR_THINKING_INTERVAL": "60",
        "FACILITAIR_HEARTBEAT_INTERVAL": "60",
        "FACILITAIR_MODEL": MODEL,
        "FACILITAIR_SANDBOX": "bwrap",
        "OPENAI_API_KEY": api_key,
        "OPENAI_BASE_URL": base_url,
        **store.environment(),
    }
    return clean_environment(**given), f"http://127.0.0.1:{http}"


async def test_the_page_shows_each_test_run_with_its_failures_and_counts(store_target: Target) -> None:
    require_bwrap()
    async with FakeOpenAI(scripted(coder=BUGGY)) as fake:
        env, base = server_env(store_target, fake.base_url, fake.api_key)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                events = await collect(client.collaborate(TASK, max_refinements=1))
            tab = await open_run(await new_context(browser), base, events[0].run_id)
            await tab.until_ended()
            page = tab.page
            plan_row = await page.locator(".plan tr[data-test-run]").inner_text()
            sections = await page.locator("section.stage").evaluate_all(
                "nodes => nodes.map(n => [n.dataset.stage, n.querySelector('.agent').textContent])"
            )
            first = "section.test-run[data-stage='4']"
            what = await page.locator(f"{first} .what").text_content()
            output = await page.locator(f"{first} pre.test-output").text_content()
            outcome = await page.locator(f"{first} .tests-outcome").text_content()
            failure_name = await page.locator(f"{first} .failure-name").all_text_contents()
            failure_message = await page.locator(f"{first} .failure-message").all_text_contents()
            state = await page.locator(first).get_attribute("data-state")
            second_outcome = await page.locator("section.test-run[data-stage='7'] .tests-outcome").text_content()
            second_state = await page.locator("section.test-run[data-stage='7']").get_attribute("data-state")
            result = await page.locator(".result .outcome").text_content()
            markup = await page.evaluate("document.querySelectorAll('main script, main img, main iframe').length")

            # A kind of event the page does not know, as a newer server could send: one tests_output event
            # is renamed on its way to a second tab (the real stream, rewritten in the browser's network
            # layer). The page applies every seq, skips that one, and shows the rest of the run.
            renamed = of_kind(events, "tests_output")[0]
            renamed_seq = next(e.seq for e in events if kind(e) == "tests_output")

            async def rename(route: Any) -> None:
                response = await route.fetch()
                blocks = (await response.text()).split("\n\n")
                for i, block in enumerate(blocks):
                    data = "".join(line[5:].strip() for line in block.split("\n") if line.startswith("data:"))
                    if data and str(json.loads(data).get("seq")) == str(renamed_seq):
                        blocks[i] = block.replace('"testsOutput":', '"someFutureKind":')
                await route.fulfill(response=response, body="\n\n".join(blocks))

            context = await new_context(browser)
            await context.route("**/events?*", rename)
            other = await open_run(context, base, events[0].run_id)
            await other.until_ended()
            other_applied = await other.applied()
            other_output = await other.page.locator(f"{first} pre.test-output").text_content()
            other_result = await other.page.locator(".result .outcome").text_content()
            other_failure = await other.page.locator(f"{first} .failure-name").all_text_contents()

    started = of_kind(events, "tests_started")
    finished = of_kind(events, "tests_finished")
    assert [(s.stage, f.stage) for s, f in zip(started, finished, strict=True)] == [(4, 4), (7, 7)]
    assert (finished[0].passed, finished[0].failed, finished[1].passed, finished[1].failed) == (0, 1, 1, 0)
    [failure] = finished[0].failures

    assert plan_row.split("\t")[1:3] == ["Test run", f"sandbox: {events[0].run_started.plan.stages[3].sandbox}"]
    assert sections == [
        ["1", "Architect"], ["2", "Coder"], ["3", "Tester"], ["4", "Test run"], ["5", "Reviewer"],
        ["6", "Refiner (round 1)"], ["7", "Test run"], ["8", "Reviewer (round 1)"], ["9", "Documenter"],
    ]  # fmt: skip
    assert what == f"python -m pytest on tests/test_rev.py, in {started[0].sandbox}"
    lines = [e.tests_output.line for e in of_kind_events(events, "tests_output") if e.tests_output.stage == 4]
    assert output == "".join(f"{line}\n" for line in lines)
    assert any("1 failed" in line for line in lines)
    seconds_text = f"{finished[0].duration.ToNanoseconds() / 1e9:.1f}s"
    assert outcome == f"Tests failed: 0 passed, 1 failed, 0 errors, 0 skipped, in {seconds_text}"
    assert failure_name == [failure.name] == ["tests/test_rev.py::test_rev"]
    assert failure_message == [failure.message]
    assert failure.message.startswith("AssertionError: assert 'ab' == 'ba'")
    assert (state, second_state) == ("failed", "done")
    assert second_outcome is not None
    assert second_outcome.startswith("Tests passed: 1 passed, 0 failed, 0 errors, 0 skipped, in ")
    assert result is not None
    assert "review approved: 4 files, 1 refinement, tests passed." in result
    assert markup == 0

    assert renamed.line in output
    assert other_applied == list(range(1, events[-1].seq + 1))
    assert other_output == "".join(f"{line}\n" for line in lines[1:])  # the renamed one is the first line
    assert (other_result, other_failure) == (result, failure_name)


async def test_the_page_says_why_tests_were_not_run(store_target: Target) -> None:
    require_bwrap()
    js = Reply(chunks=["File: rev.test.js\n```js\n", "test('rev', () => expect(rev('ab')).toBe('ba'));\n", "```\n"])
    async with FakeOpenAI(scripted(tester=js)) as fake:
        env, base = server_env(store_target, fake.base_url, fake.api_key)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                events = await collect(client.collaborate(TASK, max_refinements=1))
            tab = await open_run(await new_context(browser), base, events[0].run_id)
            await tab.until_ended()
            section = tab.page.locator("section.test-run[data-stage='4']")
            outcome = await section.locator(".tests-outcome").text_content()
            state = await section.get_attribute("data-state")
            output = await section.locator("pre.test-output").text_content()
            result = await tab.page.locator(".result .outcome").text_content()

    [finished] = of_kind(events, "tests_finished")
    assert not finished.executed
    assert outcome == f"Tests not run: {finished.not_run_reason}"
    assert "only Python tests (pytest) are run; these are not: rev.test.js" in outcome
    assert (state, output) == ("skipped", "")
    assert result is not None
    assert ", tests not run." in result


def of_kind_events(events: list[Any], name: str) -> list[Any]:
    """The whole events (not their payloads) of one kind, in order."""
    return [e for e in events if kind(e) == name]
