"""`python -m bench.page`: time from the provider's token to the web page's DOM, in headless Chromium.

The bench fake (bench/fake.py, a process of its own) stamps every token with the wall clock read just before it
writes the chunk; a `facilitair serve` process (SQLite) relays the run to its HTTP gateway; Debian's Chromium,
driven by playwright, shows the run's page. A MutationObserver put into the page before its own script runs
notes when each change of the Coder's text lands in the DOM and reads the stamps of the tokens it added: the
latency of a token is that moment (performance.timeOrigin + performance.now(), the same machine's wall clock)
minus its stamp. The run is started over gRPC and the page opened at once; every stage waits `--hold` seconds
before its first token, so the page follows the Coder's tokens live, not from a replay.

    python -m bench.page [--tokens 400] [--rate 50] [--size 24] [--runs 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import grpc
from playwright.async_api import async_playwright

from bench.cluster import environment, serving
from bench.fake import Directive
from bench.procs import spawn
from bench.stats import percentile
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.harness.processes import free_port

CHROMIUM = "/usr/bin/chromium"
CODER_STAGE = 2
GOAL_P50_MS = 20.0
# Each change of the Coder's text: when it landed, and the latency of every stamped token it added.
RECORDER = """
(() => {
  const latencies = [];
  const seen = new Map();
  window.__latencies = latencies;
  const observer = new MutationObserver((records) => {
    const at = performance.timeOrigin + performance.now();
    for (const r of records) {
      const pre = r.target.parentElement;
      if (!pre || !pre.matches || !pre.matches("pre.text[data-stage-text='STAGE']")) continue;
      const before = seen.get(r.target) || 0;
      const added = r.target.data.slice(before);
      seen.set(r.target, r.target.data.length);
      for (const m of added.matchAll(/(\\d{19})/g)) latencies.push(at - Number(BigInt(m[1]) / 1000n) / 1000);
    }
  });
  document.addEventListener("DOMContentLoaded", () => {
    observer.observe(document.body, {characterData: true, subtree: true});
  });
})();
""".replace("STAGE", str(CODER_STAGE))


async def one_run(page: Any, base: str, stub: pb_grpc.OrchestratorServiceStub, directive: Directive) -> list[float]:
    """Start a run, open its page, and return the latency (ms) of each of the Coder's tokens."""
    call: Any = stub.Collaborate(pb.CollaborateRequest(task=directive.task()))
    events = aiter(call)
    first = await anext(events)
    await page.goto(f"{base}/runs/{first.event.run_id}")
    async for _ in events:
        pass  # on to the run's end, over gRPC
    await page.wait_for_function("window.__facilitair && window.__facilitair.connection === 'ended'", timeout=60_000)
    latencies: list[float] = await page.evaluate("window.__latencies")
    return latencies


async def measure(tokens: int, rate: float, size: int, runs: int, hold: float) -> dict[str, Any]:
    """Run `runs` runs of `tokens` Coder tokens at `rate` per second; the latency percentiles over all tokens."""
    directive = Directive(tokens={"coder": tokens}, rate=rate, size=size, hold=hold)
    fake = await spawn("fake", "bench.fake")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            http = free_port()
            store = {"FACILITAIR_DB": str(Path(tmp) / "bench.sqlite3")}
            env = environment(f"http://{fake.target}/v1", "page", store, FACILITAIR_HTTP_LISTEN=f"127.0.0.1:{http}")
            async with serving(env, Path(tmp)) as server, async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM)
                context = await browser.new_context()
                await context.add_init_script(RECORDER)
                async with grpc.aio.insecure_channel(server.target) as channel:
                    stub = pb_grpc.OrchestratorServiceStub(channel)
                    samples: list[float] = []
                    for _ in range(runs):
                        page = await context.new_page()
                        found = await one_run(page, f"http://127.0.0.1:{http}", stub, directive)
                        if len(found) != tokens:
                            raise RuntimeError(f"the page showed {len(found)} of {tokens} stamped tokens")
                        samples += found
                        await page.close()
                await browser.close()
    finally:
        await fake.stop()
    p50 = percentile(samples, 50)
    return {
        "tokens": tokens,
        "rate": rate,
        "size": size,
        "runs": runs,
        "latency_ms": {
            "p50": round(p50, 2),
            "p90": round(percentile(samples, 90), 2),
            "p99": round(percentile(samples, 99), 2),
            "max": round(max(samples), 2),
        },
        "goal_p50_ms": GOAL_P50_MS,
        "met": p50 <= GOAL_P50_MS,
    }


def main() -> None:
    """Measure and print the result as JSON (and write it to --out)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=400, help="Coder tokens per run")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second the fake streams")
    parser.add_argument("--size", type=int, default=24, help="characters per token (at least 20)")
    parser.add_argument("--runs", type=int, default=3, help="runs measured")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each stage waits before its first token")
    parser.add_argument("--out", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(measure(args.tokens, args.rate, max(args.size, 20), args.runs, args.hold))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
