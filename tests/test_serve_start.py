"""`facilitair serve` refuses to start when every run would fail, saying exactly what to install or set, rather
than starting and answering every run with FAILED_PRECONDITION."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

from tests.harness.processes import clean_environment

HANG_GUARD = 60.0
LOCAL_INSTALLED = importlib.util.find_spec("xllamacpp") is not None


# `python -m facilitair.server` as if the `local` extra were not installed: its engine cannot be imported.
WITHOUT_LOCAL_EXTRA = (
    "import sys; sys.modules['xllamacpp'] = None; from facilitair.server.transport.commands import main; "
    "sys.exit(main())"
)


async def serve(tmp_path: Path, settings: dict[str, str], *, local_extra: bool = True) -> tuple[int | None, str]:
    """Start `python -m facilitair.server` on a fresh SQLite file; (exit code, stderr) once it ends, or (None,
    stderr so far) as soon as it says it is serving, or restarts a worker that exited (then it is killed)."""
    env = clean_environment(
        FACILITAIR_LISTEN="127.0.0.1:0",
        FACILITAIR_DB=str(tmp_path / "runs.db"),
        FACILITAIR_LOCAL_MODELS_DIR=str(tmp_path / "models"),  # empty: local:default is not pulled
        **settings,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *(["-m", "facilitair.server"] if local_extra else ["-c", WITHOUT_LOCAL_EXTRA]),
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(HANG_GUARD):
            async for raw in proc.stderr:
                lines.append(raw.decode())
                if '"event": "serving"' in lines[-1] or '"event": "worker_exited"' in lines[-1]:  # started, or will
                    return None, "".join(lines)
            return await proc.wait(), "".join(lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_no_key_and_no_local_extra_refuses_to_start_saying_what_to_install_or_set(tmp_path: Path) -> None:
    code, err = await serve(tmp_path, {}, local_extra=False)
    assert code == 2, err
    assert err.splitlines() == [
        "facilitair: configuration error: every run would fail: the default model local:default cannot run here: "
        "provider 'local' is not configured: install the local extra on the server (pip install "
        "'facilitair[server,local]', or pip install '.[server,local]' in a clone of the repository) and run "
        "`facilitair models pull`; or set OPENAI_API_KEY or ANTHROPIC_API_KEY to use a vendor's model"
    ]


@pytest.mark.skipif(not LOCAL_INSTALLED, reason="the local extra is not installed")
async def test_no_key_and_local_default_not_pulled_refuses_to_start_saying_pull_it(tmp_path: Path) -> None:
    code, err = await serve(tmp_path, {})
    assert code == 2, err
    [line] = err.splitlines()
    assert line.startswith(
        "facilitair: configuration error: every run would fail: the default model local:default cannot run here: "
        "the local model 'default' is not installed: run `facilitair models pull` on the server"
    )


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"OPENAI_API_KEY": "sk-test", "FACILITAIR_MODEL": "anthropic:claude-sonnet-4-6"}, "set ANTHROPIC_API_KEY"),
        ({"ANTHROPIC_API_KEY": "sk-test", "FACILITAIR_MODEL": "openai:gpt-4.1-mini"}, "set OPENAI_API_KEY"),
    ],
    ids=["anthropic-model-openai-key", "openai-model-anthropic-key"],
)
async def test_a_default_model_of_a_provider_without_a_key_refuses_to_start(
    tmp_path: Path, settings: dict[str, str], words: str
) -> None:
    code, err = await serve(tmp_path, settings)
    assert code == 2, err
    [line] = err.splitlines()
    assert line.startswith("facilitair: configuration error: every run would fail: the default model ")
    assert words in line
    assert "sk-test" not in err


async def test_workers_refuse_to_start_too_rather_than_restart_forever(tmp_path: Path, pg_url: str) -> None:
    settings = {"OPENAI_API_KEY": "sk-test", "FACILITAIR_MODEL": "anthropic:claude-sonnet-4-6"}
    code, err = await serve(tmp_path, settings | {"FACILITAIR_DATABASE_URL": pg_url, "FACILITAIR_WORKERS": "2"})
    assert code == 2, err
    [line] = err.splitlines()
    assert line.startswith("facilitair: configuration error: every run would fail: the default model ")
    assert "set ANTHROPIC_API_KEY" in line
