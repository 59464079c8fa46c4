"""The web page's approval gate (issue 22's browser item) in a real headless Chromium, against a real server
process and the fake vendor: a run pausing after the Architect shows the gate with the Architect's text (as text,
markup and all); revise with a comment, then approve, and the run completes; reject, and the run is cancelled.
"""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Route

from facilitair.client import Client, Decision
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.browser import RunPage, chromium, new_context, open_run
from tests.harness.events import RunStream, collect, kind
from tests.harness.processes import server_processes
from tests.harness.scripts import prompt_of, scripted
from tests.harness.stores import Target
from tests.test_page import TASK, server_env

HANG_GUARD = 120.0
DESIGN = "# Design\nOne module `rev.py`. <script>window.__pwned = 'gate'</script> <b>bold?</b>\n"
GATE = "section.approval"


async def until_gate(tab: RunPage, count: int) -> None:
    """Wait until the page shows its `count`th gate, still open."""
    await tab.until(
        "(n) => { const g = document.querySelectorAll('section.approval');"
        " return g.length === n && !g[n - 1].dataset.decided; }",
        count,
    )


@pytest.mark.both_stores
async def test_the_gate_shows_the_design_then_revise_and_approve_complete_the_run(store_target: Target) -> None:
    script = scripted(architect=[Reply(chunks=[DESIGN]), Reply(chunks=["# Design\nRevised.\n"])])
    comment = "Use reversed() and say why, PAGE-COMMENT"
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                live = RunStream(client.collaborate(TASK, pause_after=["architect"]))
                gate_event = await live.until(lambda e: kind(e) == "approval_requested")
                run_id = gate_event.run_id
                tab = await open_run(await new_context(browser), base, run_id)
                await until_gate(tab, 1)
                shown = await tab.page.locator(f"{GATE} pre[data-approval-text]").text_content()
                state = await tab.page.locator(".run-head .state").text_content()
                prefilled = await tab.page.locator(f"{GATE} textarea[data-approval-edit]").input_value()
                # Revise without a comment: refused on the page, nothing sent.
                await tab.page.locator(f"{GATE} button[data-approval='revise']").click()
                refused = await tab.page.locator(f"{GATE} .error").text_content()
                # Keyboard: type the comment, then Tab to Revise and press Enter.
                await tab.page.locator(f"{GATE} textarea[data-approval-comment]").fill(comment)
                await tab.page.locator(f"{GATE} button[data-approval='revise']").focus()
                await tab.page.keyboard.press("Enter")
                await until_gate(tab, 2)
                first_closed = await tab.page.locator(f"{GATE} >> nth=0").get_attribute("data-decided")
                await tab.page.locator(f"{GATE} >> nth=1").locator("button[data-approval='approve']").click()
                await tab.until_ended()
                events = await collect(client.watch(run_id))
                outcome = await tab.page.locator(".result .outcome").text_content()
                decided = await tab.page.locator(f"{GATE} >> nth=1").locator("h2").text_content()
                pwned = await tab.page.evaluate("window.__pwned === undefined ? null : window.__pwned")
                scripts = await tab.page.evaluate("document.querySelectorAll('main script, main b').length")
                listed = await client.get_run(run_id)
    assert shown == DESIGN
    assert prefilled == DESIGN
    assert state == "awaiting_approval"
    assert refused is not None
    assert "comment" in refused
    assert first_closed == "revise"
    assert decided is not None
    assert "approved by" in decided
    assert (pwned, scripts) == (None, 0)
    architect = script.requests("architect")
    assert len(architect) == 2
    assert comment not in prompt_of(architect[0])
    assert comment in prompt_of(architect[1])
    decisions = [e.approval_decided.decision for e in events if kind(e) == "approval_decided"]
    assert decisions == [pb.APPROVAL_DECISION_REVISE, pb.APPROVAL_DECISION_APPROVE]
    assert kind(events[-1]) == "run_completed"
    assert listed.state == pb.RUN_STATE_COMPLETED
    assert outcome is not None
    assert outcome.startswith("Run completed")


@pytest.mark.both_stores
async def test_reject_on_the_page_cancels_the_run_and_a_second_tab_sees_it_decided(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted()) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                live = RunStream(client.collaborate(TASK, pause_after=["architect"]))
                run_id = (await live.until(lambda e: kind(e) == "approval_requested")).run_id
                context = await new_context(browser)
                tab, other = await open_run(context, base, run_id), await open_run(context, base, run_id)
                await until_gate(tab, 1)
                await until_gate(other, 1)
                runs = await context.new_page()
                await runs.goto(base + "/")
                row = f"li[data-run='{run_id}'] .state"
                await RunPage(runs).until(f'document.querySelector("{row}")')
                waiting = await runs.locator(row).text_content()
                await tab.page.locator(f"{GATE} textarea[data-approval-comment]").fill("not this design")
                await tab.page.locator(f"{GATE} button[data-approval='reject']").click()
                await tab.until_ended()
                await other.until_ended()
                # The other tab's gate closed when approval_decided arrived: who decided what, no choices left.
                other_says = await other.page.locator(GATE).text_content()
                buttons = await other.page.locator(f"{GATE} button").count()
                outcome = await tab.page.locator(".result .outcome").text_content()
                events = await collect(client.watch(run_id))
                # The list shows the ended run's state.
                await tab.page.goto(base + "/")
                await tab.until(f"document.querySelector(\"li[data-run='{run_id}'] .state\")")
                listed = await tab.page.locator(f"li[data-run='{run_id}'] .state").text_content()
    assert other_says is not None
    assert "rejected by" in other_says
    assert "not this design" in other_says
    assert buttons == 0
    assert waiting is not None
    assert waiting.startswith("awaiting approval")
    assert outcome is not None
    assert outcome.startswith("Run cancelled")
    assert "not this design" in outcome
    assert kind(events[-1]) == "run_cancelled"
    assert [kind(e) for e in events].count("approval_decided") == 1
    assert listed == "cancelled"


@pytest.mark.both_stores
async def test_edit_on_the_page_sends_the_edited_design_the_coder_reads(store_target: Target) -> None:
    script = scripted()
    edited = "# Design\nEDITED-ON-THE-PAGE: one module `rev.py`.\n"
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                live = RunStream(client.collaborate(TASK, pause_after=["architect"]))
                run_id = (await live.until(lambda e: kind(e) == "approval_requested")).run_id
                tab = await open_run(await new_context(browser), base, run_id)
                await until_gate(tab, 1)
                await tab.page.locator(f"{GATE} details.approval-edit summary").click()
                await tab.page.locator(f"{GATE} textarea[data-approval-edit]").fill(edited)
                await tab.page.locator(f"{GATE} button[data-approval='edit']").click()
                await tab.until_ended()
                events = await collect(client.watch(run_id))
                decided = await tab.page.locator(GATE).text_content()
    assert [e.approval_decided.edited for e in events if kind(e) == "approval_decided"] == [True]
    assert kind(events[-1]) == "run_completed"
    assert edited.strip() in prompt_of(script.requests("coder")[0])
    assert decided is not None
    assert "edited by" in decided


async def test_a_decision_refused_because_another_came_first_shows_the_servers_message(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted()) as fake:
        env, base = server_env(store_target, fake)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                live = RunStream(client.collaborate(TASK, pause_after=["architect"]))
                run_id = (await live.until(lambda e: kind(e) == "approval_requested")).run_id
                tab = await open_run(await new_context(browser), base, run_id)
                await until_gate(tab, 1)

                async def reject_first(route: Route) -> None:
                    # Someone else rejects while the page's Approve is on its way: the server refuses it.
                    await client.submit_approval(run_id, Decision.REJECT, comment="decided elsewhere")
                    await route.continue_()

                await tab.page.route("**/approvals", reject_first)
                await tab.page.locator(f"{GATE} button[data-approval='approve']").click()
                await tab.until("document.querySelector('section.approval .error:not([hidden])')")
                await tab.until_ended()
                refusal = await tab.page.locator(f"{GATE} .error").text_content()
                heading = await tab.page.locator(f"{GATE} h2").text_content()
                events = await collect(client.watch(run_id))
    assert refusal is not None
    assert "REJECT" in refusal.upper(), refusal
    assert heading is not None
    assert "rejected by" in heading
    assert [e.approval_decided.decision for e in events if kind(e) == "approval_decided"] == [
        pb.APPROVAL_DECISION_REJECT
    ]
    assert kind(events[-1]) == "run_cancelled"
