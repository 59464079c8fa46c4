"""The surfaces people and generic tools use: the `facilitair` CLI in each format, and `buf curl`.

Both run as real subprocesses against a real server on 127.0.0.1:0 whose provider is a fake
OpenAI server speaking the real wire format; subprocesses are awaited with asyncio so the server
and the fake keep running on this loop meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.cli import BUF, cli, cli_environment
from tests.harness.servers import Harness, ServerFactory

CODE = "def reverse(s: str) -> str:\n    return s[::-1]\n"
TEST = "from reverse import reverse\n\n\ndef test_reverse() -> None:\n    assert reverse('ab') == 'ba'\n"
DESIGN = ["One ", "function ", "reverse(s)."]
DOCS = ["# reverse\n", "Call `reverse(s)`.\n"]


def reply_for(body: dict[str, Any]) -> Reply:
    """Pick the scripted reply by the agent named in the system prompt."""
    system = str(body["messages"][0]["content"])
    if "You are the Reviewer" in system:
        return Reply(chunks=['```json\n{"approved": true, "summary": "ok", "issues": []}\n```'])
    if "You are the Coder" in system:
        return Reply(chunks=["File: reverse.py\n```python\n", CODE, "```\n"], input_tokens=200, output_tokens=30)
    if "You are the Tester" in system:
        return Reply(chunks=["File: test_reverse.py\n```python\n", TEST, "```\n"])
    if "You are the Documenter" in system:
        return Reply(chunks=DOCS)
    return Reply(chunks=DESIGN, input_tokens=100, output_tokens=3)


@dataclass
class Live:
    """A running server with its fake provider."""

    server: Harness
    fake: FakeOpenAI

    @property
    def target(self) -> str:
        """Where the server listens."""
        return self.server.target


@pytest.fixture
async def live(make_server: ServerFactory) -> AsyncIterator[Live]:
    """A server on 127.0.0.1:0 backed by a fake OpenAI."""
    async with FakeOpenAI(reply_for) as fake:
        yield Live(await make_server(openai=fake), fake)


def json_documents(text: str) -> list[dict[str, Any]]:
    """Split concatenated (pretty-printed) JSON documents, as buf curl prints a stream."""
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
    return docs


async def test_cli_jsonl_streams_every_event_once_in_order(live: Live) -> None:
    code, out, _ = await cli(live.target, "run", "Write a function that reverses a string", "--format", "jsonl")
    assert code == 0
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    assert "runStarted" in events[0]
    assert "runCompleted" in events[-1]
    coder_stage = next(
        e["stageStarted"]["stage"] for e in events if e.get("stageStarted", {}).get("agent") == "AGENT_CODER"
    )
    coder_text = "".join(e["tokenDelta"]["text"] for e in events if e.get("tokenDelta", {}).get("stage") == coder_stage)
    assert coder_text == f"File: reverse.py\n```python\n{CODE}```\n"


async def test_cli_plain_output_and_output_dir(live: Live, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, out, err = await cli(
        live.target, "run", "reverse a string", "--format", "plain", "--output-dir", str(out_dir)
    )
    assert code == 0, err
    assert "\x1b[" not in out  # no escape codes in plain
    lines = out.splitlines()
    headers = [line for line in lines if line.startswith("== [")]
    assert headers == [
        "== [1/5] Architect - openai:gpt-4.1-mini",
        "== [2/5] Coder - openai:gpt-4.1-mini",
        "== [3/5] Reviewer - openai:gpt-4.1-mini",
        "== [4/5] Tester - openai:gpt-4.1-mini",
        "== [5/5] Documenter - openai:gpt-4.1-mini",
    ]
    assert "One function reverse(s)." in out
    assert "Review: approved" in out
    assert any(line.startswith("Run completed") for line in lines)
    assert (out_dir / "reverse.py").read_text() == CODE
    assert (out_dir / "test_reverse.py").read_text() == TEST
    assert (out_dir / "README.md").read_text() == "".join(DOCS)
    assert (out_dir / "DESIGN.md").read_text() == "".join(DESIGN)
    # The CLI's records are under .facilitair/, where no produced file may go; events as --format jsonl prints them.
    assert sorted(p.name for p in out_dir.iterdir()) == [
        ".facilitair",
        "DESIGN.md",
        "README.md",
        "reverse.py",
        "test_reverse.py",
    ]
    events = [json.loads(line)["event"] for line in (out_dir / ".facilitair" / "events.jsonl").read_text().splitlines()]
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    run = json.loads((out_dir / ".facilitair" / "run.json").read_text())
    # Architect 100 + Coder 200 + Reviewer, Tester, Documenter 11 each, as the fake reported them.
    assert run["runCompleted"]["usage"]["inputTokens"] == "333"


async def test_cli_pretty_format_completes_with_summary_table(live: Live) -> None:
    code, out, _ = await cli(live.target, "run", "reverse a string", "--format", "pretty")
    assert code == 0
    assert "Architect" in out
    assert "Documenter" in out
    assert "Stages" in out  # the summary table's title
    assert CODE.splitlines()[1].strip() in out


async def test_cli_exit_codes(live: Live) -> None:
    code, _, err = await cli(live.target, "run", "   ")
    assert code == 2
    assert "task" in err
    code, _, err = await cli(live.target, "run", "x", "--context", "[1, 2]")
    assert code == 2
    assert "--context must be a JSON object" in err
    code, _, err = await cli(live.target, "run", "x", "--model", "anthropic:claude-sonnet-4-6")
    assert code == 1
    assert "ANTHROPIC_API_KEY" in err
    code, _, err = await cli(live.target, "watch", "00000000-0000-0000-0000-000000000000")
    assert code == 1
    assert "NOT_FOUND" in err
    code, _, err = await cli("127.0.0.1:1", "runs")
    assert code == 3
    assert err == "cannot reach facilitair at 127.0.0.1:1 - is `facilitair serve` running?\n"


async def test_cli_detach_then_watch_status_runs(live: Live, tmp_path: Path) -> None:
    code, out, _ = await cli(live.target, "run", "reverse a string", "--detach")
    assert code == 0
    run_id = out.strip()
    code, out, _ = await cli(live.target, "watch", run_id, "--format", "jsonl")
    assert code == 0
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert events[0]["seq"] == "1"
    assert "runCompleted" in events[-1]
    code, out, _ = await cli(live.target, "watch", run_id, "--after", "3", "--format", "jsonl")
    assert code == 0
    assert [int(json.loads(line)["event"]["seq"]) for line in out.splitlines()] == list(range(4, len(events) + 1))
    code, out, _ = await cli(live.target, "status", run_id, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["state"] == "RUN_STATE_COMPLETED"
    assert status["lastSeq"] == str(len(events))
    code, out, _ = await cli(live.target, "runs")
    assert code == 0
    assert run_id in out
    assert "completed" in out


async def test_buf_curl_reflection_health_and_collaborate(live: Live) -> None:
    assert BUF is not None, "buf comes with `pip install -e .[dev]` (the buf-bin package)"

    async def buf_curl(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    base = f"http://{live.target}"
    services = (await buf_curl("--list-services", base)).split()
    assert services == [
        "facilitair.v1.OrchestratorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert json_documents(await buf_curl(f"{base}/grpc.health.v1.Health/Check")) == [{"status": "SERVING"}]
    body = json.dumps({"task": "Write a function that reverses a string", "context": {"language": "python"}})
    docs = json_documents(await buf_curl("-d", body, f"{base}/facilitair.v1.OrchestratorService/Collaborate"))
    events = [d["event"] for d in docs]
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    assert "runStarted" in events[0]
    assert "runCompleted" in events[-1]
    paths = {a["path"] for a in events[-1]["runCompleted"]["result"]["artifacts"]}
    assert paths == {"DESIGN.md", "reverse.py", "test_reverse.py", "README.md"}
    assert '"language": "python"' in live.fake.requests[0]["messages"][1]["content"]
    run_id = events[0]["runId"]
    watch = json.dumps({"run_id": run_id, "after_seq": 10})
    replay = [
        d["event"]
        for d in json_documents(await buf_curl("-d", watch, f"{base}/facilitair.v1.OrchestratorService/WatchRun"))
    ]
    assert replay == events[10:]
    cancel = json.dumps({"run_id": run_id})
    [cancelled] = json_documents(await buf_curl("-d", cancel, f"{base}/facilitair.v1.OrchestratorService/CancelRun"))
    assert cancelled["run"]["state"] == "RUN_STATE_COMPLETED"  # cancelling a finished run returns its final state


async def test_config_show_masks_secrets_and_names_bad_keys(tmp_path: Path) -> None:
    secret = "sk-openai-SECRET-0123456789abcdef"
    caller = "fac-caller-SECRET-0123456789"
    env = {**os.environ, "OPENAI_API_KEY": secret, "FACILITAIR_API_KEYS": f"alice:{caller}"}

    async def config_show(*extra: str) -> tuple[int, str, str]:
        return await cli(None, "config", "show", *extra, env=env)

    code, out, _ = await config_show("--pipeline", "examples/pipeline.toml")
    assert code == 0
    shown = json.loads(out)
    assert shown["settings"]["openai_api_key"] == "**********"
    assert shown["settings"]["api_keys"] == {"alice": "**********"}
    assert shown["pipeline"]["agents"]["coder"]["model"] == "openai:gpt-4.1"
    assert secret[8:16] not in out
    assert caller[8:16] not in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[agents.coder]\nmodel = "openai:gpt-4.1"\ncolour = "blue"\n')
    code, _, err = await config_show("--pipeline", str(bad))
    assert code == 2
    assert "agents.coder.colour" in err


async def test_cli_sends_the_api_key_and_exits_4_without_it(make_server: ServerFactory) -> None:
    key = "alice-key-0123456789abcdef"
    async with FakeOpenAI(reply_for) as fake:
        live = Live(await make_server(openai=fake, api_keys=f"alice:{key}"), fake)
        code, _, err = await cli(live.target, "run", "reverse a string", "--format", "jsonl")
        assert code == 4
        assert "UNAUTHENTICATED" in err
        assert fake.requests == []
        code, out, _ = await cli(live.target, "run", "reverse a string", "--format", "jsonl", "--api-key", key)
        assert code == 0
        assert "runCompleted" in out.splitlines()[-1]
        code, out, _ = await cli(live.target, "runs", "--api-key", key)
        assert code == 0
        assert "completed" in out


# ----- issue 21 item 10: the server's help speaks the user's words, not Python's ---------------------------------

# Metavars and defaults pydantic-settings writes from Python types and default factories.
PYTHON_TYPES = {"str", "Path", "SecretStr", "float", "int", "bool"}
INTERNALS = ("default factory", "default: null", "(undefined)")


@pytest.mark.parametrize("command", [("serve",), ("config", "show")])
async def test_server_help_shows_flags_in_the_users_words(command: tuple[str, ...]) -> None:
    code, out, err = await cli(None, *command, "--help", env=cli_environment(COLUMNS="200"))
    assert (code, err) == (0, "")
    text = " ".join(out.split())
    metavars = re.findall(r"(--[a-z-]+) ([A-Za-z]+)\b", text)
    assert len(metavars) > 30
    assert [(flag, metavar) for flag, metavar in metavars if metavar in PYTHON_TYPES] == []
    assert [words for words in INTERNALS if words in text] == []
    assert "--listen HOST:PORT" in text
    assert "--db FILE" in text
    assert "--database-url URL" in text
    assert "--lease-seconds SECONDS" in text
    assert "--max-runs N" in text
    assert "facilitair.sqlite3)" in text  # the real default path, not the factory's name
    model = text[text.rindex("--model PROVIDER:MODEL") :]  # its help, after the usage
    assert model.index("local:default") < model.index("--pipeline")  # the default without a key is named


async def test_config_show_prints_the_model_that_will_be_used_once(tmp_path: Path) -> None:
    keyless = await cli(None, "config", "show", env=cli_environment())
    with_key = await cli(None, "config", "show", env=cli_environment(OPENAI_API_KEY="sk-" + "x" * 30))
    shown, keyed = json.loads(keyless[1])["settings"], json.loads(with_key[1])["settings"]
    assert "default_models" not in shown
    assert shown["model"] == "local:default"
    assert keyed["model"] == "openai:gpt-4.1-mini"


async def test_top_level_help_says_what_the_server_commands_do() -> None:
    code, out, _ = await cli(None, "--help", env=cli_environment(COLUMNS="200"))
    assert code == 0
    assert "(server) see:" not in out
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.startswith("    ")}
    assert lines["serve"] == "run the server"
    assert lines["config"].startswith("show the server settings")
    assert lines["models"]
