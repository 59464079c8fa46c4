"""`python -m bench.sandbox`: what running the Tester's tests costs (issue 24's numbers).

1. The sandbox's own overhead: a Test run of a file with one empty test, under bubblewrap, against the same
   pytest run unsandboxed (the interpreter and pytest starting, which any test run pays), and bubblewrap
   alone (its command line running /usr/bin/true).
2. How long cancelling a Test run whose test sleeps takes, the sandbox killed and its directory removed
   (goal: within a second).
3. The time from the Tester's last token to `tests_started`, by the server's event clock, over whole runs of
   an in-process server whose provider is the tests' fake OpenAI (no model time in it).

Goal (issue 24): the sandbox's overhead under 300 ms on the 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from facilitair.client import Client
from facilitair.server.sandbox import Sandbox, SandboxKind
from facilitair.server.settings import Settings
from facilitair.server.transport.app import create_server
from tests.fakes.providers import FakeOpenAI
from tests.harness.scripts import scripted

EMPTY = {"test_empty.py": "def test_nothing() -> None:\n    pass\n"}


def _figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
        "n": len(ordered),
    }


def _open_root() -> Path:
    """A sandbox root in the temp directory that `nobody` (a root server's sandbox uid) can pass through."""
    root = Path(tempfile.mkdtemp(prefix="facilitair-bench-sandbox-"))
    root.chmod(0o755)
    return root


async def overhead(repeat: int) -> dict[str, dict[str, float]]:
    """Wall time of a Test run of one empty test, as the pipeline pays it (copy, run, report, clean up), under
    bubblewrap and unsandboxed, alternating, so that both meet the same moments of a shared machine's load."""
    roots = {kind: _open_root() for kind in (SandboxKind.BWRAP, SandboxKind.UNSANDBOXED)}
    try:
        sandboxes = {kind: Sandbox(kind, root=root) for kind, root in roots.items()}
        for sandbox in sandboxes.values():
            availability = await sandbox.start()
            if not availability.usable:
                raise SystemExit(f"no usable sandbox: {availability.detail}")
        samples: dict[SandboxKind, list[float]] = {kind: [] for kind in sandboxes}
        for _ in range(repeat):
            for kind, sandbox in sandboxes.items():
                started = time.monotonic()
                report = await sandbox.run(EMPTY, lambda _line: None)
                samples[kind].append(time.monotonic() - started)
                assert report.ok, report
        return {kind.value: _figures(found) for kind, found in samples.items()}
    finally:
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)


async def bwrap_alone(repeat: int) -> dict[str, float]:
    """bubblewrap's own start and end: the sandbox's command line running /usr/bin/true instead of pytest."""
    root = _open_root()
    try:
        sandbox = Sandbox(SandboxKind.BWRAP, root=root)
        await sandbox.start()
        work = root / "work" / "bench"
        work.mkdir()
        args = sandbox.command_for(work)
        args = [*args[: args.index("--") + 1], "/usr/bin/true"]
        samples = []
        for _ in range(repeat):
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(*args, env={"PATH": "/usr/bin:/bin"})
            assert await process.wait() == 0
            samples.append(time.monotonic() - started)
        return _figures(samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def cancel_to_end(repeat: int) -> dict[str, float]:
    """Seconds from cancelling a Test run whose test sleeps to the run's task having ended, sandbox killed."""
    root = _open_root()
    sleeper = {
        "test_sleep.py": "import time\n\ndef test_sleep():\n    print('sleeping', flush=True)\n    time.sleep(60)\n"
    }
    try:
        sandbox = Sandbox(SandboxKind.BWRAP, root=root)
        await sandbox.start()
        samples = []
        for _ in range(repeat):
            sleeping = asyncio.Event()

            def heard(line: str, sleeping: asyncio.Event = sleeping) -> None:
                if "sleeping" in line:
                    sleeping.set()

            task = asyncio.create_task(sandbox.run(sleeper, heard))
            await sleeping.wait()
            started = time.monotonic()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            samples.append(time.monotonic() - started)
        return _figures(samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def tester_to_tests_started(runs: int) -> dict[str, float]:
    """Seconds from the Tester's last token_delta to tests_started, by the events' server times."""
    samples = []
    async with FakeOpenAI(scripted()) as fake:
        with tempfile.TemporaryDirectory() as data:
            settings = Settings(
                listen="127.0.0.1:0",
                db=Path(data) / "bench.sqlite3",
                openai_api_key=SecretStr(fake.api_key),
                openai_base_url=fake.base_url,
                model="openai:gpt-4.1-mini",
                sandbox="bwrap",
            )
            server = await create_server(settings)
            try:
                async with Client(f"127.0.0.1:{server.port}") as client:
                    for _ in range(runs):
                        events = [e async for e in client.collaborate("Write a function that reverses a string")]
                        tester = next(e.stage_started.stage for e in events if e.stage_started.agent == 5)
                        last = max(
                            e.time.ToNanoseconds()
                            for e in events
                            if e.WhichOneof("payload") == "token_delta" and e.token_delta.stage == tester
                        )
                        started = next(e for e in events if e.WhichOneof("payload") == "tests_started")
                        samples.append((started.time.ToNanoseconds() - last) / 1e9)
            finally:
                await server.stop(0)
    return _figures(samples)


async def measure(repeat: int, runs: int) -> dict[str, object]:
    """Every figure of this scenario."""
    return {
        "empty_test_run": await overhead(repeat),
        "bwrap_running_true": await bwrap_alone(repeat),
        "tester_last_token_to_tests_started": await tester_to_tests_started(runs),
        "cancel_to_sandbox_gone": await cancel_to_end(max(repeat // 4, 3)),
        "goal_ms": 300,
    }


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="test runs per sandbox kind")
    parser.add_argument("--runs", type=int, default=10, help="whole runs for the Tester-to-tests_started time")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.repeat, args.runs)), indent=2))


if __name__ == "__main__":
    main()
