"""The documentation says what the code does: the error table is the status table, and every `facilitair`
command the README and docs/ show parses with the real CLI parser (flags that exist, values they accept).

The strict Sphinx build (scripts/test) checks links and pages; these check claims.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import re
import shlex
import sys
from pathlib import Path

import grpc
import pytest

from facilitair.cli.main import _parser
from facilitair.server.errors import Reason
from facilitair.server.transport.status import CODE_OF_REASON
from tests.fakes.providers import FakeOpenAI
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Placeholders the pages use for values a reader fills in.
PLACEHOLDERS = {"RUN_ID": "3f2a9c1e", "RUN": "3f2a9c1e", "SEQ": "10", "DIR": "out", "FILE": "task.txt", "...": "x"}


def error_rows() -> dict[str, set[str]]:
    """docs/errors.md's table: each status code and the reasons its row names."""
    rows: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "errors.md").read_text().splitlines():
        match = re.match(r"\| ([A-Z_]+) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = set(re.findall(r"`([A-Z][A-Z_]+)`", match.group(2)))
    return rows


def test_the_error_table_is_the_status_table() -> None:
    by_code: dict[str, set[str]] = {}
    for reason, code in CODE_OF_REASON.items():
        by_code.setdefault(code.name, set()).add(reason.value)
    assert error_rows() == by_code
    assert {r.value for r in Reason} == set().union(*by_code.values())
    assert all(isinstance(code, grpc.StatusCode) for code in CODE_OF_REASON.values())


def shown_commands() -> list[tuple[str, str]]:
    """Every `facilitair ...` line of a code block in the README and docs/, with the page it is on."""
    found: list[tuple[str, str]] = []
    for page in PAGES:
        in_fence = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_fence = not in_fence
                continue
            if not (in_fence or line.startswith("    ")):
                continue
            text = line.strip().removeprefix("$ ")
            words = shlex.split(text, comments=True) if "facilitair " in text else []
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                words.pop(0)  # an environment variable set for the command
            if len(words) > 1 and words[0] in ("facilitair", ".venv/bin/facilitair"):
                found.append((page.name, text))
    return found


def test_the_pages_show_commands() -> None:
    assert len(shown_commands()) >= 15


@pytest.mark.parametrize(("page", "command"), shown_commands())
def test_a_command_the_docs_show_parses(page: str, command: str) -> None:
    words = shlex.split(command, comments=True)
    while re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words.pop(0)
    words = words[1:]
    ends = [i for i, word in enumerate(words) if word in ("|", "&", "&&", ";")]
    words = words[: ends[0]] if ends else words  # the command alone, not what the shell does around it
    argv = [PLACEHOLDERS.get(word, word) for word in words]
    try:
        _parser(argv).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")


def subcommand_flags(words: list[str]) -> set[str]:
    """The option strings of a `facilitair` subcommand (`["config", "show"]`), as its real parser declares them."""
    parser: argparse.ArgumentParser = _parser(words[:1])
    for word in words:
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not nested or word not in nested[0].choices:
            break
        parser = nested[0].choices[word]
    return set(parser._option_string_actions)


def usage_rows() -> list[tuple[list[str], set[str]]]:
    """docs/using.md's command table: each row's first command (its words up to a flag) and the flags it names."""
    rows = []
    for line in (ROOT / "docs" / "using.md").read_text().splitlines():
        match = re.match(r"\| `facilitair ([^`]*)`", line)
        if match:
            shown = match.group(1).replace("\\|", "|")
            words = [w for w in re.split(r"[ |\[]", shown.split(" [", 1)[0]) if re.fullmatch(r"[a-z]+", w)]
            rows.append((words, set(re.findall(r"--[a-z][a-z-]*", shown))))
    return rows


def test_the_command_table_names_only_flags_that_exist() -> None:
    rows = usage_rows()
    assert {words[0] for words, _ in rows} >= {"serve", "run", "watch", "files", "runs", "info", "config", "models"}
    unknown = {" ".join(words): sorted(flags - subcommand_flags(words)) for words, flags in rows}
    assert {command: flags for command, flags in unknown.items() if flags} == {}


def readme_python() -> str:
    """The README's one Python example."""
    text = (ROOT / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readmes_python_example_runs(make_server: ServerFactory, tmp_path: Path) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        script = tmp_path / "example.py"
        script.write_text(readme_python().replace('"127.0.0.1:50051"', repr(h.target)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    [line] = out.decode().splitlines()
    run_id, rest = line.split(" ", 1)
    files, cost = rest.rsplit(" ", 1)
    runs, _ = await h.client.list_runs()
    assert [run_id] == [run.run_id for run in runs]
    assert sorted(ast.literal_eval(files)) == ["DESIGN.md", "README.md", "src/rev.py", "tests/test_rev.py"]
    assert float(cost) == pytest.approx(runs[0].usage.cost_usd)
