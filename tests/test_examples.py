"""The integration surfaces other services use: the example backend service and the blocking client."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from facilitair.client import SyncClient
from tests.fakes.providers import FakeOpenAI, Fault, Reply
from tests.harness.scripts import default_replies, held, scripted, text_of
from tests.harness.servers import ServerFactory

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "backend_service.py"


async def run_example(*args: str) -> tuple[int, list[dict[str, object]]]:
    """Run the example service as a real subprocess; return its exit code and JSON lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None, err.decode()
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()]


async def test_example_service_starts_follows_and_stores_runs(make_server: ServerFactory, tmp_path: Path) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        code, outcomes = await run_example(
            "--target", h.target, "--out", str(tmp_path), "reverse a string", "sum a list"
        )
    assert code == 0
    assert sorted(str(o["task"]) for o in outcomes) == ["reverse a string", "sum a list"]
    assert {o["state"] for o in outcomes} == {"completed"}
    for outcome in outcomes:
        run_dir = tmp_path / str(outcome["run_id"])
        assert outcome["files"] == 4
        coder = default_replies()["coder"]
        assert (run_dir / "src" / "rev.py").read_text() == "".join(coder.chunks[1:-1])
        assert (run_dir / "README.md").read_text() == text_of(default_replies()["documenter"])


async def test_example_service_cancels_a_run_over_its_cost_limit(make_server: ServerFactory, tmp_path: Path) -> None:
    # The coder is held after one chunk, so the run is still going when the architect's cost trips the limit.
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            code, outcomes = await run_example(
                "--target", h.target, "--out", str(tmp_path), "--cancel-above", "0.0000001", "reverse a string"
            )
        finally:
            release.set()
    assert code == 1
    [outcome] = outcomes
    assert outcome["state"] == "cancelled"
    assert str(outcome["detail"]).endswith("(cost limit)")
    run = await h.client.get_run(str(outcome["run_id"]))
    assert run.state == 5  # RUN_STATE_CANCELLED


async def test_sync_client_runs_watches_and_lists(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)

        def blocking() -> tuple[list[int], list[int], int, str]:
            with SyncClient(h.target) as client:
                events = list(client.collaborate("reverse a string"))
                replay = list(client.watch(events[0].run_id, after_seq=3))
                runs, _ = client.list_runs()
                return (
                    [e.seq for e in events],
                    [e.seq for e in replay],
                    len(runs),
                    events[-1].WhichOneof("payload") or "",
                )

        seqs, replay, count, last = await asyncio.to_thread(blocking)
    assert seqs == list(range(1, len(seqs) + 1))
    assert replay == seqs[3:]
    assert count == 1
    assert last == "run_completed"


# ----- the library example the docs show ---------------------------------------------------------------------------

RUN_TASK = EXAMPLE.parent / "run_task.py"
CLIENTS_PAGE = EXAMPLE.parent.parent / "docs" / "clients.md"


def test_the_docs_show_the_library_example_that_runs() -> None:
    source = RUN_TASK.read_text()
    code = source[source.index('"""\n\n', 3) + 5 :]  # the file after its docstring
    assert f"```python\n{code}```" in CLIENTS_PAGE.read_text()


async def run_task(target: str) -> tuple[int, str, str]:
    """Run examples/run_task.py as a real subprocess; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RUN_TASK), target, "reverse a string",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_library_example_reports_a_completed_and_a_failed_run(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        code, out, err = await run_task(h.target)
    assert (code, err) == (0, "")
    assert text_of(default_replies()["coder"]) in out
    assert out.splitlines()[-5].endswith(": 4 files, review approved, $0.0008")
    assert out.splitlines()[-3] == "  src/rev.py (3 lines)"
    failing = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(503)))
    async with FakeOpenAI(failing) as fake:
        h = await make_server(openai=fake, provider_attempts=1, db=h.settings.db.with_suffix(".2"))
        code, out, err = await run_task(h.target)
    assert code == 1
    assert "failed: UNAVAILABLE: openai overloaded" in err
