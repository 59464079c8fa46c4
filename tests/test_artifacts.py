"""Files of different stages never overwrite each other; a deliberate rewrite is a new version (issue 11, item 14).

A real server and client with the fake OpenAI behind the official SDK; the CLI runs as a real subprocess.
"""

from __future__ import annotations

from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.cli import cli
from tests.harness.events import kind, of_kind
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"
CODE = "def rev(s: str) -> str:\n    return s[::-1]\n"
REFINED = 'def rev(s: str) -> str:\n    """Reverse s."""\n    return s[::-1]\n'
TEST = 'from example import rev\n\n\ndef test_rev() -> None:\n    assert rev("ab") == "ba"\n'
REJECT = '```json\n{"approved": false, "summary": "No docstring.", "issues": ["add a docstring"]}\n```'


def files_reply(*files: tuple[str, str]) -> Reply:
    """An agent's answer writing `files` (path, content) in the `File:` format."""
    return Reply(chunks=[f"File: {path}\n```python\n{content}```\n" for path, content in files])


async def test_a_test_file_named_like_the_code_is_kept_beside_it_and_announced(make_server: ServerFactory) -> None:
    # Both the Coder and the Tester of a small model wrote src/example.py (seen against a real server).
    script = scripted(
        coder=files_reply(("src/example.py", CODE)),
        tester=files_reply(("src/example.py", TEST), ("src/example_test.py", "# the tester's own second file\n")),
    )
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_refinements=0)
        code, out, _ = await cli(h.target, "watch", events[0].run_id, "--format", "plain")

    assert kind(events[-1]) == "run_completed", events[-1]
    produced = [(a.path, a.kind, a.stage, a.version, a.requested_path) for a in
                (p.artifact for p in of_kind(events, "artifact_produced"))]  # fmt: skip
    assert produced == [
        ("DESIGN.md", pb.ARTIFACT_KIND_DESIGN, 1, 1, ""),
        ("src/example.py", pb.ARTIFACT_KIND_CODE, 2, 1, ""),
        # The test is kept under a free name of its own (not over the code, nor over the tester's other file).
        ("src/example_test_2.py", pb.ARTIFACT_KIND_TEST, 4, 1, "src/example.py"),
        ("src/example_test.py", pb.ARTIFACT_KIND_TEST, 4, 1, ""),
        ("README.md", pb.ARTIFACT_KIND_DOC, 5, 1, ""),
    ]
    final = {a.path: (a.kind, a.content, a.version) for a in events[-1].run_completed.result.artifacts}
    assert final == {
        "DESIGN.md": (pb.ARTIFACT_KIND_DESIGN, final["DESIGN.md"][1], 1),
        "src/example.py": (pb.ARTIFACT_KIND_CODE, CODE, 1),
        "src/example_test_2.py": (pb.ARTIFACT_KIND_TEST, TEST, 1),
        "src/example_test.py": (pb.ARTIFACT_KIND_TEST, "# the tester's own second file\n", 1),
        "README.md": (pb.ARTIFACT_KIND_DOC, final["README.md"][1], 1),
    }
    # The Documenter reads both the code and the test.
    documenter = script.requests("documenter")[0]["messages"][-1]["content"]
    assert CODE in documenter
    assert TEST in documenter
    assert code == 0
    assert "+ src/example_test_2.py (test, 5 lines; written as src/example.py, the code's path)" in out.splitlines()


async def test_the_refiner_rewriting_the_code_makes_a_new_version(make_server: ServerFactory) -> None:
    script = scripted(
        coder=files_reply(("src/example.py", CODE)),
        reviewer=[Reply(chunks=[REJECT]), Reply(chunks=[REJECT])],
        refiner=[files_reply(("src/example.py", REFINED)), files_reply(("src/example.py", REFINED + "\n"))],
    )
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_refinements=2)
        code, out, _ = await cli(h.target, "watch", events[0].run_id, "--format", "plain")

    assert kind(events[-1]) == "run_completed", events[-1]
    versions = [(a.stage, a.version, a.content) for a in
                (p.artifact for p in of_kind(events, "artifact_produced")) if a.path == "src/example.py"]  # fmt: skip
    assert versions == [(2, 1, CODE), (4, 2, REFINED), (6, 3, REFINED + "\n")]
    # The result keeps the latest version of each path, once.
    final = [a for a in events[-1].run_completed.result.artifacts if a.path == "src/example.py"]
    assert [(a.version, a.stage, a.content, a.requested_path) for a in final] == [(3, 6, REFINED + "\n", "")]
    lines = out.splitlines()
    assert code == 0
    assert "+ src/example.py (code, 2 lines)" in lines
    assert "+ src/example.py (code, 3 lines, version 2)" in lines
    assert "+ src/example.py (code, 4 lines, version 3)" in lines


async def test_a_file_line_with_an_empty_block_delivers_no_file(make_server: ServerFactory) -> None:
    # A `File:` line over an empty code block was a 0-byte file in the result (issue 21 item 13); a Refiner's
    # empty block for a path leaves the Coder's version in place.
    script = scripted(
        coder=files_reply(("src/example.py", CODE), ("src/empty.py", "")),
        refiner=files_reply(("src/example.py", "\n")),
        reviewer=[Reply(chunks=[REJECT]), Reply(chunks=['{"approved": true, "summary": "ok", "issues": []}'])],
    )
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_refinements=1)

    assert kind(events[-1]) == "run_completed", events[-1]
    produced = [p.artifact.path for p in of_kind(events, "artifact_produced")]
    assert "src/empty.py" not in produced
    assert produced.count("src/example.py") == 1
    final = {a.path: a.content for a in events[-1].run_completed.result.artifacts}
    assert final["src/example.py"] == CODE
    assert all(content.strip() for content in final.values())
