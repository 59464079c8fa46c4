"""`facilitair completion bash|zsh|fish` (issue 21 item 11): each script, generated from the one parser, run by
its real shell in a subprocess. `config <TAB>` and `models <TAB>` offered the files of the current folder and
`serve` offered no flag; zsh ran the bash script and fish had none.

bash: the function is called with COMP_WORDS set, as bash's completion does. zsh: the function is called with
$words and $CURRENT set and compadd/_files replaced by functions that print what they were given (they work
only inside zsh's completion widgets). fish: `complete -C` asks fish itself for the completions of a line.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.harness.cli import cli, cli_environment

HANG_GUARD = 60.0
FILES = "<files>"  # what a script offers where it completes file names


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one file in it, the current folder of the shells: file completion offers `afile.txt`."""
    where = tmp_path_factory.mktemp("completion")
    (where / "afile.txt").write_text("x")
    return where


async def script(shell: str, folder: Path) -> Path:
    code, text, err = await cli(None, "completion", shell, env=cli_environment())
    assert (code, err) == (0, "")
    path = folder.parent / f"{folder.name}.{shell}"  # not in the folder: file completion would offer it
    path.write_text(text)
    return path


async def run_shell(*argv: str, cwd: Path) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD)
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


async def complete(shell: str, folder: Path, *words: str) -> list[str]:
    """What `shell` offers after `facilitair WORDS` (the last word is the one being completed)."""
    path = await script(shell, folder)
    quoted = " ".join(f"'{w}'" for w in words)
    if shell == "bash":
        probe = (
            f"source {path}; COMP_WORDS=(facilitair {quoted}); COMP_CWORD={len(words)}; _facilitair; "
            "printf '%s\\n' \"${COMPREPLY[@]}\""
        )
        found = await run_shell("bash", "-c", probe, cwd=folder)
    elif shell == "zsh":
        probe = (
            "compdef() { :; }; "
            f"source {path}; "
            'compadd() { shift; print -rl -- "$@"; }; '
            f"_files() {{ print -r -- '{FILES}'; }}; "
            f"words=(facilitair {quoted}); CURRENT={len(words) + 1}; _facilitair; true"
        )
        found = await run_shell("zsh", "-f", "-c", probe, cwd=folder)
        # compadd offers every word and the shell keeps those that start with what was typed.
        found = [w for w in found if w == FILES or w.startswith(words[-1])]
    else:
        line = "facilitair " + " ".join(words)
        found = await run_shell("fish", "--no-config", "-c", f"source {path}; complete -C{line!r}", cwd=folder)
        found = [w.split("\t")[0] for w in found]
    if shell != "zsh":
        found = [FILES if w == "afile.txt" else w for w in found]
    return sorted(set(found) - {""})  # bash's printf prints one empty line for no reply


SHELLS = [
    pytest.param(shell, marks=pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} is not installed"))
    for shell in ("bash", "zsh", "fish")
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (("ru",), ["run", "runs"]),
        (("config", ""), ["show"]),  # not the current folder's files
        (("models", ""), ["list", "pull"]),
        (("completion", ""), ["bash", "fish", "zsh"]),
        (("serve", "--max-r"), ["--max-refinements", "--max-runs", "--max-runs-per-principal"]),
        (("serve", "--log-level", ""), ["debug", "error", "info", "warning"]),
        (("serve", "--db", ""), [FILES]),
        (("serve", "--listen", ""), []),  # HOST:PORT: nothing to offer, and no file names
        (("config", "show", "--pipel"), ["--pipeline"]),
        (("run", "--format", ""), ["jsonl", "plain", "pretty"]),
        (("run", "--task-file", ""), [FILES]),
        (("run", "--model", ""), []),
        (("runs", "--state", "c"), ["cancelled", "completed"]),
        (("status", ""), []),  # a run id: not a file
        (("files", "some-run", ""), [FILES]),
        (("re",), ["reject", "revise"]),
        (("runs", "--state", "a"), ["awaiting-approval"]),
        (("run", "--on-approval-timeout", ""), ["approve", "reject"]),
        (("run", "--pause-after", ""), []),  # agents, not files
        (("edit", "some-run", ""), []),  # a path among the paused stage's files, not a local one
        (("approve", "--c"), ["--ca", "--cert", "--comment"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else None,
)
async def test_each_shell_completes_commands_flags_values_and_only_paths_with_files(
    shell: str, words: tuple[str, ...], offered: list[str], folder: Path
) -> None:
    assert await complete(shell, folder, *words) == offered
