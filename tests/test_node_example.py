"""The Node.js example (examples/node) against a real server: what docs/clients.md's "From other languages" says.

It installs the example's locked dependencies with `npm ci` (again only when package-lock.json changed) and
runs `node client.js` as a real subprocess. Node and npm are required: their absence fails the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.fakes.providers import FakeOpenAI
from tests.harness.scripts import default_replies, scripted
from tests.harness.servers import ServerFactory

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
STAMP = EXAMPLE / "node_modules" / ".facilitair-lock-sha256"


async def _exec(*args: str, cwd: Path = EXAMPLE, within: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def installed() -> None:
    """`npm ci` unless node_modules already matches package-lock.json."""
    assert shutil.which("node"), "the Node example needs node (v18+) on PATH: apt-get install nodejs npm"
    assert shutil.which("npm"), "the Node example needs npm on PATH: apt-get install npm"
    lock = hashlib.sha256((EXAMPLE / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == lock:
        return
    code, out, err = await _exec("npm", "ci", "--no-audit", "--no-fund", within=300)
    assert code == 0, f"npm ci failed:\n{out}\n{err}"
    STAMP.write_text(lock)


async def node(*args: str) -> tuple[int, str, str]:
    """Run the example client; (exit code, stdout, stderr)."""
    return await _exec("node", "client.js", *args)


async def test_node_client_runs_with_a_json_context_and_reads_64_bit_fields_as_strings(
    make_server: ServerFactory,
) -> None:
    await installed()
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        context = json.dumps({"language": "python", "constraints": ["no I/O", 3, True, None], "style": {"pep8": True}})
        code, out, err = await node("run", h.target, "Write a function that reverses a string", "--context", context)
        outcome = json.loads(out)
        replay = await node("watch", h.target, outcome["run_id"], "--after", "10")
    assert code == 0, err
    assert outcome["state"] == "run_completed"
    assert outcome["files"] == ["DESIGN.md", "src/rev.py", "tests/test_rev.py", "README.md"]
    assert isinstance(outcome["last_seq"], str)  # longs: String
    # One count per kind of event, in the order first seen: the line stays short however long the run.
    assert outcome["last_seq"] == str(outcome["events"]) == str(sum(outcome["kinds"].values()))
    assert next(iter(outcome["kinds"])) == "run_started"  # oneofs: true
    assert outcome["kinds"]["run_completed"] == 1
    assert outcome["kinds"]["artifact_produced"] == 4
    expected_tokens = sum(r.input_tokens for agent, r in default_replies().items() if agent != "refiner")
    assert outcome["usage"]["input_tokens"] == str(expected_tokens)  # a uint64, as a string
    prompt = fake.requests[0]["messages"][1]["content"]
    assert '"language": "python"' in prompt, "the plain JSON context reached the agents as a Struct"
    assert '"pep8": true' in prompt
    replayed = json.loads(replay[1])
    assert replay[0] == 0
    assert replayed["events"] == outcome["events"] - 10
    assert replayed["kinds"]["run_completed"] == 1
    assert "run_started" not in replayed["kinds"]
    assert replayed["last_seq"] == outcome["last_seq"]


async def test_node_client_reads_error_details(make_server: ServerFactory) -> None:
    await installed()
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        refused = await node("run", h.target, "x", "--max-refinements", "99")
        missing = await node("watch", h.target, "no-such-run")
    assert refused[0] == 2
    assert refused[2].splitlines() == [
        "INVALID_ARGUMENT: max_refinements: must be at most 10",
        "  max_refinements: must be at most 10",  # decoded from grpc-status-details-bin
    ]
    assert missing[0] == 2
    assert missing[2].startswith("NOT_FOUND: ")
    assert fake.requests == []


@pytest.mark.parametrize(
    "args", [(), ("run",), ("run", "127.0.0.1:1"), ("watch", "127.0.0.1:1"), ("nonsense", "x", "y")]
)
async def test_node_client_without_its_arguments_prints_its_usage(args: tuple[str, ...]) -> None:
    await installed()
    code, out, err = await node(*args)
    assert (code, out) == (2, "")
    assert err.startswith("usage: node client.js run TARGET TASK")
    assert "TypeError" not in err
