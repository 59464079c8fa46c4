"""The `facilitair` command at its edges: no server, bad input, task and context input, files, lists, budgets,
closed output, completion. The CLI runs as a real subprocess against a real server with the fake OpenAI."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facilitair.client import RunState
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.cli import cli, cli_environment, jsonl
from tests.harness.events import kind
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"
HANG_GUARD = 60.0


@pytest.fixture
def dead_target() -> Iterator[str]:
    """HOST:PORT where nothing listens for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# ----- 1. no server -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("run", TASK), ("runs",), ("status", "some-run"), ("watch", "some-run")])
async def test_no_server_is_one_line_and_exit_3(dead_target: str, args: tuple[str, ...]) -> None:
    code, out, err = await cli(dead_target, *args)
    assert (code, out) == (3, "")
    assert err == f"cannot reach facilitair at {dead_target} - is `facilitair serve` running?\n"


async def test_tls_against_a_plaintext_server_is_one_line_without_grpc_logs(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        code, _, err = await cli(h.target, "run", TASK, "--tls")
        listed = await cli(f"http://{h.target}", "runs")
    assert code == 3
    # No "ssl_transport_security.cc ... Handshake failed" line from gRPC's C core.
    assert err == f"cannot reach facilitair at {h.target} - is `facilitair serve` running with TLS?\n"
    assert fake.requests == []
    assert listed == (0, "no runs\n", "")


# ----- 4. bad input is a usage error ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("run", "x", "--max-refinements", "-1"), "--max-refinements: '-1' must be at least 0"),
        (("watch", "some-run", "--after", "-5"), "--after: '-5' must be at least 0"),
        (("runs", "--limit", "0"), "--limit: '0' must be at least 1"),
        (("run", "x", "--max-cost", "nan"), "--max-cost: 'nan' must be at least 0"),
        (("run", "x", "--max-tokens", "lots"), "--max-tokens: 'lots' is not a whole number"),
        (("run",), "no task: facilitair run TASK"),
        (("run", "x", "--context", "[1, 2]"), "--context must be a JSON object"),
        (("run", "x", "--context", "{"), "--context is not valid JSON"),
        (("run", "x", "--file", "/no/such/file.py"), "--file /no/such/file.py: cannot read it"),
        (("run", "x", "--target", "host:port"), "target 'host:port': port 'port' is not a number"),
        (("run", "x", "--task-file", "t.txt"), "give the task as an argument or with --task-file, not both"),
    ],
)
async def test_bad_input_is_a_usage_error_not_a_traceback(dead_target: str, args: tuple[str, ...], words: str) -> None:
    code, _, err = await cli(dead_target, *args)
    assert code == 2
    assert words in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["run", "watch"])
async def test_an_output_dir_that_is_a_file_or_cannot_be_made_is_one_usage_line(
    dead_target: str, tmp_path: Path, command: str
) -> None:
    (tmp_path / "afile").write_text("x")
    subject = TASK if command == "run" else "some-run"
    for where, why in ((tmp_path / "afile", "is a file, not a folder"), (Path("/proc/x"), "cannot create it")):
        code, out, err = await cli(dead_target, command, subject, "--output-dir", str(where))
        assert (code, out) == (2, "")
        assert err.startswith(f"facilitair: --output-dir {where}: {why}")
        assert len(err.splitlines()) == 1, err


async def test_files_into_a_file_or_an_unmakeable_folder_is_one_usage_line(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("x")
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        code, out, _ = await cli(h.target, "run", TASK, "--detach")
        await cli(h.target, "watch", out.strip())
        into_file = await cli(h.target, "files", out.strip(), str(tmp_path / "afile"))
        into_proc = await cli(h.target, "files", out.strip(), "/proc/x")
    assert code == 0
    assert into_file == (2, "", f"facilitair: {tmp_path / 'afile'}: is a file, not a folder\n")
    assert into_proc[:2] == (2, "")
    assert into_proc[2].startswith("facilitair: /proc/x: cannot create it")
    assert len(into_proc[2].splitlines()) == 1, into_proc[2]
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("rnu", "x"), "facilitair: unknown command 'rnu'; did you mean 'run'?"),
        (("stauts", "last"), "facilitair: unknown command 'stauts'; did you mean 'status'?"),
        (("config", "shwo"), "facilitair config: unknown command 'shwo'; did you mean 'show'?"),
        (("run", "x", "--format", "plian"), "facilitair run: --format: invalid choice 'plian'; did you mean 'plain'?"),
        (
            ("run", "write", "a", "function", "--format", "plain"),
            'facilitair: the task is one argument: quote it, as in facilitair run "write a function"',
        ),
    ],
)
async def test_a_mistyped_command_or_an_unquoted_task_gets_a_hint(
    dead_target: str, args: tuple[str, ...], words: str
) -> None:
    code, out, err = await cli(dead_target, *args)
    assert (code, out) == (2, "")
    assert words in err.splitlines()
    assert "Traceback" not in err


async def test_a_bare_port_as_target_is_that_port_on_this_machine(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        port = h.target.rpartition(":")[2]
        listed = await cli(None, "runs", "--target", port)
    assert listed == (0, "no runs\n", "")


async def test_a_missing_or_refused_api_key_names_the_flag_and_the_variable(make_server: ServerFactory) -> None:
    key = "k" * 24
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, api_keys=f"alice:{key}")
        missing = await cli(h.target, "runs", env=cli_environment())
        wrong = await cli(h.target, "runs", "--api-key", "x" * 24, env=cli_environment())
        right = await cli(h.target, "runs", env=cli_environment(FACILITAIR_API_KEY=key))
    assert missing == (
        4,
        "",
        "facilitair: UNAUTHENTICATED: the server needs an API key: give it with --api-key KEY or FACILITAIR_API_KEY\n",
    )
    assert wrong == (
        4,
        "",
        "facilitair: UNAUTHENTICATED: the server refused the API key given (--api-key or FACILITAIR_API_KEY)\n",
    )
    assert right == (0, "no runs\n", "")


# ----- 5/6. outcome: exit codes, approval, the end of a run --------------------------------------------------


async def test_a_run_ends_with_its_id_files_and_how_to_get_them(make_server: ServerFactory, tmp_path: Path) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        code, out, err = await cli(h.target, "run", TASK, "--format", "plain")
        run_id = out.splitlines()[0].removeprefix("Run ")
        listed = await cli(h.target, "files", run_id)
        written = await cli(h.target, "files", run_id, str(tmp_path / "out"))
        as_json = await cli(h.target, "files", run_id, "--json")
    assert code == 0
    assert err.splitlines() == [
        f"In a browser: http://127.0.0.1:{h.server.http_port}/runs/{run_id}",  # the server's page for the run
        f"Run {run_id}: 4 files: DESIGN.md, src/rev.py, tests/test_rev.py, README.md",
        f"Get them with: facilitair files {run_id} DIR",
    ]
    assert listed[0] == 0
    assert [line.split()[:2] for line in listed[1].splitlines()] == [
        ["DESIGN.md", "design"],
        ["src/rev.py", "code"],
        ["tests/test_rev.py", "test"],
        ["README.md", "doc"],
    ]
    assert listed[1].splitlines()[1].endswith("  3 lines")
    assert written[0] == 0
    assert (tmp_path / "out" / "src" / "rev.py").read_text() == "".join(default_replies()["coder"].chunks[1:-1])
    assert written[1].splitlines()[0] == f"wrote {tmp_path / 'out' / 'DESIGN.md'}"
    assert [f["path"] for f in json.loads(as_json[1])] == ["DESIGN.md", "src/rev.py", "tests/test_rev.py", "README.md"]


async def test_files_of_a_run_that_is_not_complete_say_why(make_server: ServerFactory) -> None:
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            code, out, _ = await cli(h.target, "run", TASK, "--detach")
            running = await cli(h.target, "files", out.strip())
        finally:
            release.set()
    assert code == 0
    assert running == (
        1,
        "",
        f"facilitair: run {out.strip()} is running; its files come when it completes: facilitair watch {out.strip()}\n",
    )


async def test_files_of_a_cancelled_run_are_those_it_produced_before(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # A run cancelled while the Coder writes has produced DESIGN.md; `files` said "it has no files"
    # (issue 21 item 13). Its files are the latest versions it stored before it ended.
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            stream = h.stream(TASK)
            design = await stream.until(lambda e: kind(e) == "artifact_produced")
            await stream.until(lambda e: kind(e) == "token_delta" and e.token_delta.stage == 2)
            await h.client.cancel_run(design.run_id)
            assert kind((await stream.to_end())[-1]) == "run_cancelled"
        finally:
            release.set()
        run_id = design.run_id
        listed = await cli(h.target, "files", run_id)
        written = await cli(h.target, "files", run_id, str(tmp_path / "out"))
        as_json = await cli(h.target, "files", run_id, "--json")
    assert listed[0] == 0
    assert [line.split()[:2] for line in listed[1].splitlines()] == [["DESIGN.md", "design"]]
    assert listed[2].splitlines()[0] == (
        f"run {run_id} was cancelled: these are the files it produced before it ended (the latest version of each)"
    )
    assert written[0] == 0
    assert (tmp_path / "out" / "DESIGN.md").read_text() == design.artifact_produced.artifact.content
    assert [f["path"] for f in json.loads(as_json[1])] == ["DESIGN.md"]


async def test_require_approval_fails_an_unapproved_run(make_server: ServerFactory) -> None:
    verdict = '{"approved": false, "summary": "no", "issues": [{"severity": "minor", "description": "x"}]}'
    async with FakeOpenAI(scripted(reviewer=Reply(chunks=[verdict]))) as fake:
        h = await make_server(openai=fake)
        plain = await cli(h.target, "run", TASK, "--max-refinements", "0", "--format", "plain")
        strict = await cli(h.target, "run", TASK, "--max-refinements", "0", "--require-approval", "--format", "plain")
    assert plain[0] == 0
    assert strict[0] == 1
    assert "review not approved: 4 files, 0 refinements" in plain[1]
    assert "Review: changes requested (1 issue)" in plain[1]
    assert "The last review did not approve the code." in plain[2]
    assert "Exit code 1 (--require-approval)." in strict[2]


# ----- 7. --output-dir --------------------------------------------------------------------------------------------


async def test_output_dir_records_cannot_collide_with_produced_files(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    coder = Reply(
        chunks=[
            "File: run.json\n```json\n{}\n```\n",
            "File: events.jsonl\n```\nx\n```\n",
            "File: .facilitair/run.json\n```json\n{}\n```\n",
        ]
    )
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        h = await make_server(openai=fake)
        code, out, err = await cli(h.target, "run", TASK, "--output-dir", str(tmp_path), "--format", "jsonl")
    assert code == 0
    assert (tmp_path / "run.json").read_text() == "{}\n"
    assert (tmp_path / "events.jsonl").read_text() == "x\n"
    record = json.loads((tmp_path / ".facilitair" / "run.json").read_text())
    assert "runCompleted" in record
    stored = (tmp_path / ".facilitair" / "events.jsonl").read_text().splitlines()
    assert stored == out.splitlines(), "events.jsonl has the shape --format jsonl prints"
    assert "did not write .facilitair/run.json" in err


async def test_a_run_into_an_output_dir_still_ends_with_its_id_and_how_to_get_the_files(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        code, out, err = await cli(h.target, "run", TASK, "--output-dir", str(tmp_path / "out"), "--format", "plain")
    run_id = out.splitlines()[0].removeprefix("Run ")
    assert code == 0
    assert err.splitlines()[-2:] == [
        f"Run {run_id}: 4 files in {tmp_path / 'out'}: DESIGN.md, src/rev.py, tests/test_rev.py, README.md",
        f"Get them with: facilitair files {run_id} DIR",
    ]
    assert (tmp_path / "out" / "src" / "rev.py").exists()


# ----- 9. budgets ------------------------------------------------------------------------------------------------


async def test_budgets_reach_the_server(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        cost = await cli(h.target, "run", TASK, "--max-cost", "0.000001")
        tokens = await cli(h.target, "run", TASK, "--max-tokens", "10")
    assert cost[0] == 1
    assert "over the budget $0.0000" in cost[2]
    assert "raise max_cost_usd (--max-cost for facilitair run) or choose cheaper models" in cost[2]
    assert tokens[0] == 1
    assert "tokens are over the budget of 10 by" in tokens[2]
    assert tokens[2].endswith("; raise max_tokens (--max-tokens for facilitair run)\n")
    assert fake.requests == []


# ----- 11. task and context input ---------------------------------------------------------------------------------


async def test_task_from_stdin_and_file_and_code_files_as_context(make_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "task.txt").write_text("Reverse a string\nfrom a file\n")
    (tmp_path / "context.json").write_text('{"language": "python"}')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "old.py").write_text("def old() -> None:\n    pass\n")
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        piped = await cli(h.target, "run", "-", "--format", "jsonl", stdin=b"Reverse a string\nfrom stdin\n")
        filed = await cli(
            h.target, "run", "--task-file", "task.txt", "--context-file", "context.json",
            "--file", "src/old.py", "--format", "jsonl", cwd=tmp_path,
        )  # fmt: skip
        too_big = tmp_path / "big.py"
        too_big.write_text("x" * 70_000)
        big = await cli(h.target, "run", "x", "--file", str(too_big))
    assert piped[0] == 0
    assert jsonl(piped[1])[0]["runStarted"]["task"] == "Reverse a string\nfrom stdin"
    assert filed[0] == 0
    assert jsonl(filed[1])[0]["runStarted"]["task"] == "Reverse a string\nfrom a file"
    prompt = json.dumps(fake.requests[-1]["messages"])
    assert "def old() -> None:" in prompt
    assert "src/old.py" in prompt
    assert "python" in prompt
    assert big[0] == 2
    assert "the context is 68 KiB; the server takes at most 64 KiB (the largest --file is" in big[2]


# ----- 13. runs -----------------------------------------------------------------------------------------------------


async def test_runs_has_a_header_one_line_tasks_and_keeps_the_filter(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        empty = await cli(h.target, "runs")
        long_task = "Write a function\nthat reverses " + "a very long string " * 10
        for task in (long_task, "second", "third"):
            assert (await cli(h.target, "run", task, "--format", "jsonl"))[0] == 0
        listed = await cli(h.target, "runs", "--state", "completed", "--limit", "2")
        out = listed[1]
        rest = await cli(h.target, *out.splitlines()[-1].removeprefix("more: facilitair ").split())
        none = await cli(h.target, "runs", "--state", "failed")
    assert empty == (0, "no runs\n", "")
    assert listed[0] == 0
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "CREATED", "STATE", "COST", "TASK"]
    assert [line.split()[-1] for line in lines[1:3]] == ["third", "second"]
    assert lines[3].startswith("more: facilitair runs --page-token ")
    assert lines[3].endswith(" --state completed --limit 2")
    [_, row] = rest[1].splitlines()
    # One line, cut with an ellipsis at 60 characters when stdout is not a terminal.
    assert row.endswith("  Write a function that reverses a very long string a very lo…")
    assert none == (0, "no runs in state failed\n", "")


async def test_runs_limit_over_100_pages_by_itself(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, runs_per_minute=1000, max_runs_per_principal=200, max_runs=200)
        for batch in range(0, 105, 15):
            await asyncio.gather(*(h.client.run(f"task {i}") for i in range(batch, min(batch + 15, 105))))
        code, out, _ = await cli(h.target, "runs", "--limit", "103", "--json")
    listed = json.loads(out)
    assert code == 0
    assert len(listed["runs"]) == 103
    assert len({r["runId"] for r in listed["runs"]}) == 103
    # One key style, protobuf JSON's lowerCamelCase as in every other --json output (it said next_page_token).
    assert list(listed) == ["runs", "nextPageToken"]
    assert listed["nextPageToken"]
    assert {RunState[r["state"].removeprefix("RUN_STATE_")] for r in listed["runs"]} == {RunState.COMPLETED}


# ----- 14. closed output, version, completion ---------------------------------------------------------------------


@pytest.mark.parametrize("on_disconnect", ["continue", "cancel"])
async def test_output_closed_early_cancels_or_says_how_to_follow(
    make_server: ServerFactory, on_disconnect: str
) -> None:
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "facilitair.cli.main", "run", TASK, "--format", "plain",
                "--on-disconnect", on_disconnect, "--target", h.target,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            assert proc.stderr is not None
            head = [await asyncio.wait_for(proc.stdout.readline(), HANG_GUARD) for _ in range(3)]  # `| head -3`
            transport = proc._transport  # type: ignore[attr-defined]
            transport.get_pipe_transport(1).close()
            release.set()
            err = (await asyncio.wait_for(proc.stderr.read(), HANG_GUARD)).decode()
            code = await proc.wait()
            run_id = head[0].decode().split()[1]
            if on_disconnect == "continue":
                await h.client.wait(run_id)
            run = await h.client.get_run(run_id)
        finally:
            release.set()
    assert code == 0
    assert "Traceback" not in err
    page, _, err = err.partition("\n")
    assert page == f"In a browser: http://127.0.0.1:{h.server.http_port}/runs/{run_id}"
    if on_disconnect == "cancel":
        assert err == f"facilitair: output closed; run {run_id} cancelled (--on-disconnect cancel)\n"
        assert RunState(run.state) is RunState.CANCELLED
    else:
        assert err.startswith(f"facilitair: output closed; the run goes on. Follow it with: facilitair watch {run_id}")
        assert RunState(run.state) is RunState.COMPLETED


async def test_version_and_bash_completion(dead_target: str, tmp_path: Path) -> None:
    code, version, _ = await cli(dead_target, "--version")
    assert code == 0
    assert version.startswith("facilitair 0.")
    code, script, _ = await cli(dead_target, "completion", "bash")
    assert code == 0
    (tmp_path / "completion.bash").write_text(script)

    async def complete(*words: str) -> list[str]:
        line = " ".join(f'"{w}"' for w in words)
        probe = (
            f"source {tmp_path / 'completion.bash'}; COMP_WORDS=(facilitair {line}); "
            f"COMP_CWORD={len(words)}; _facilitair; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        proc = await asyncio.create_subprocess_exec("bash", "-c", probe, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), HANG_GUARD)
        return sorted(out.decode().split())

    assert await complete("ru") == ["run", "runs"]
    assert await complete("run", "--format", "") == ["jsonl", "plain", "pretty"]
    assert await complete("runs", "--st") == ["--state"]
    assert await complete("runs", "--state", "c") == ["cancelled", "completed"]
    assert await complete("completion", "") == ["bash", "fish", "zsh"]
