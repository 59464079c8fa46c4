"""`scripts/demo` run twice, as a newcomer runs it: each run's files in a folder of their own, and it says where they
are and where the `facilitair` command is. The provider is the fake OpenAI (through OPENAI_BASE_URL, as for an
OpenAI-compatible endpoint); the server and the CLI are the real ones the script starts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from tests.fakes.providers import FakeOpenAI
from tests.harness.processes import free_port
from tests.harness.scripts import scripted

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD = 120.0

pytestmark = pytest.mark.skipif(
    Path(sys.prefix).resolve() != (REPO / ".venv").resolve(),
    reason="scripts/demo runs in the repository's .venv; these tests run in another environment",
)


def mark_installed() -> None:
    """Tell the script that .venv holds what it needs (the dev extra includes the server): no pip install here."""
    # The script's stamp: what it installed from, pyproject.toml and the lock.
    installed_from = (REPO / "pyproject.toml").read_bytes() + (REPO / "requirements" / "constraints.txt").read_bytes()
    digest = hashlib.sha256(installed_from).hexdigest()
    (REPO / ".venv" / ".facilitair-demo-0").write_text(digest + "\n")


async def demo(fake: FakeOpenAI, tmp_path: Path) -> tuple[int, str]:
    """Run scripts/demo with a key for the fake; (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACILITAIR_", "OPENAI_", "ANTHROPIC_"))}
    env |= {
        "OPENAI_API_KEY": fake.api_key,
        "OPENAI_BASE_URL": fake.base_url,
        "FACILITAIR_DB": str(tmp_path / "runs.db"),
        "FACILITAIR_DEMO_PORT": str(free_port()),
        "FACILITAIR_DEMO_OUTPUT": str(tmp_path / "out"),
    }
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "scripts" / "demo"), "Write a function that reverses a string",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_each_demo_run_gets_a_folder_of_its_own_and_says_where_facilitair_is(tmp_path: Path) -> None:
    mark_installed()
    async with FakeOpenAI(scripted()) as fake:
        first = await demo(fake, tmp_path)
        second = await demo(fake, tmp_path)
    for code, err in (first, second):
        assert code == 0, err
        assert "`. .venv/bin/activate`" in err
        assert "installing" not in err
    folders = sorted((tmp_path / "out").iterdir())
    assert len(folders) == 2, folders
    runs = set()
    for folder, (_, err) in zip(folders, (first, second), strict=True):
        assert f"This run's files go to {folder}" in err
        assert (folder / "src" / "rev.py").is_file()
        runs.add(json.loads((folder / ".facilitair" / "run.json").read_text())["runId"])
    assert len(runs) == 2, "each folder holds its own run"
