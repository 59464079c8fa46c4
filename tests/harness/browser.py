"""The web page in a real headless Chromium (Debian's `chromium`), driven by playwright.

The browser is launched from /usr/bin/chromium with `executable_path`: playwright's own browser download is never
used. scripts/test installs Chromium on a Debian CI machine; elsewhere the page's tests skip, saying so (and
fail under CI=true, where a missing browser is a broken setup, not a choice).

`RECORDER` is put into every page before its own script runs: a MutationObserver that notes, for each change
of a stage's text, the stage, its length and the wall-clock time (ms since the epoch, sub-millisecond), and
whether the stage was still running. The tests read what the page showed, and when, from it; the page itself
carries no instrumentation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Screenshots, kept after the run (gitignored), where CI keeps its artifacts.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Hang guard for a wait in the page, in seconds: a run with the fakes ends in about a second.
PAGE_GUARD = 30.0
# How often a wait asks the page again (a condition polled, not a sleep standing in for one).
POLL = 0.02

RECORDER = """
(() => {
  const changes = [];
  window.__textChanges = changes;
  const observer = new MutationObserver((records) => {
    const at = performance.timeOrigin + performance.now();
    for (const r of records) {
      const pre = r.target.parentElement;
      if (!pre || !pre.matches || !pre.matches("pre.text")) continue;
      const section = pre.closest("section.stage");
      changes.push({stage: Number(pre.dataset.stageText), length: r.target.data.length, at,
                    running: section ? section.dataset.state !== "done" : false});
    }
  });
  document.addEventListener("DOMContentLoaded", () => {
    observer.observe(document.body, {characterData: true, subtree: true});
  });
})();
"""


def need_chromium() -> None:
    """Skip (fail under CI) when Debian's Chromium is not installed."""
    if CHROMIUM.exists() or shutil.which("chromium"):
        return
    message = f"{CHROMIUM} is missing: scripts/test installs it as root on Debian (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed afterwards."""
    need_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(browser: Browser, **options: Any) -> BrowserContext:
    """A browser context (its own cookies) with the recorder in every page."""
    context = await browser.new_context(**options)
    await context.add_init_script(RECORDER)
    return context


@dataclass
class RunPage:
    """One tab showing a run."""

    page: Page

    async def until(self, expression: str, arg: Any = None) -> Any:
        """Wait until `expression` (JavaScript, given `arg`) is truthy in the page; its value.

        Asked from here every POLL seconds: playwright's own wait_for_function evaluates its predicate with
        eval() inside the page, which the page's content-security-policy (no 'unsafe-eval') rightly refuses.
        """
        async with asyncio.timeout(PAGE_GUARD):
            # The page's state, read from outside: there is nothing to await, so it is asked again.
            while not (value := await self.page.evaluate(expression, arg)):  # noqa: ASYNC110
                await asyncio.sleep(POLL)
        return value

    async def until_connection(self, *states: str) -> str:
        """Wait until the page's connection state is one of `states`."""
        value: str = await self.until(
            "(states) => window.__facilitair && states.includes(window.__facilitair.connection)"
            " && window.__facilitair.connection",
            list(states),
        )
        return value

    async def until_ended(self) -> None:
        """Wait until the page has the run's terminal event and has stopped following it."""
        await self.until_connection("ended")

    async def until_text(self, stage: int, text: str) -> None:
        """Wait until stage `stage` shows exactly `text`."""
        await self.until(
            "([stage, text]) => { const p = document.querySelector(`pre[data-stage-text='${stage}']`);"
            " return p !== null && p.textContent === text; }",
            [stage, text],
        )

    async def text(self, stage: int) -> str:
        """What stage `stage` shows."""
        value = await self.page.locator(f"pre[data-stage-text='{stage}']").text_content()
        return value or ""

    async def applied(self) -> list[int]:
        """Every seq the page applied, in order."""
        seqs: list[int] = await self.page.evaluate("window.__facilitair.appliedSeqs")
        return seqs

    async def counters(self) -> dict[str, int]:
        """The stream's duplicates, gaps and reconnects."""
        found: dict[str, int] = await self.page.evaluate(
            "({duplicates: window.__facilitair.duplicates, gaps: window.__facilitair.gaps,"
            " reconnects: window.__facilitair.reconnects})"
        )
        return found

    async def changes(self) -> list[dict[str, Any]]:
        """The recorder's notes: each change of a stage's text."""
        notes: list[dict[str, Any]] = await self.page.evaluate("window.__textChanges")
        return notes

    async def view_text(self) -> str:
        """The run view as a person reads it."""
        return await self.page.locator("article.run").inner_text()

    async def screenshot(self, name: str) -> Path:
        """Keep a full-page screenshot under test-artifacts/."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path), full_page=True)
        return path


async def open_run(context: BrowserContext, base: str, run_id: str) -> RunPage:
    """A new tab on the run's page, once it follows the run."""
    page = await context.new_page()
    await page.goto(f"{base}/runs/{run_id}")
    run = RunPage(page)
    await run.until("() => window.__facilitair !== undefined")
    return run
