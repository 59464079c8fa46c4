"""The `facilitair` command as a real subprocess, awaited with asyncio so servers and fakes on this loop go on."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HANG_GUARD = 60.0
# `buf` for `buf curl`, the generic tool the tests call the server with (the buf-bin package, a dev dependency).
BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")


def cli_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any facilitair, provider or caller-key setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACILITAIR_", "FAC_", "OPENAI_", "ANTHROPIC_"))}
    env.update(extra)
    return env


async def cli(
    target: str | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    within: float = HANG_GUARD,
) -> tuple[int, str, str]:
    """Run `facilitair ARGS` (with FACILITAIR_TARGET=target when given); (exit code, stdout, stderr).

    The environment is this process's unless `env` is given; GRPC_VERBOSITY is always left out, since the
    CLI's own default must keep gRPC's logs away. stdin is a pipe holding `stdin` (empty by default).
    """
    run_env = dict(os.environ if env is None else env)
    if target is not None:
        run_env["FACILITAIR_TARGET"] = target
    run_env.pop("GRPC_VERBOSITY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "facilitair.cli.main", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=run_env, cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def jsonl(out: str) -> list[dict[str, Any]]:
    """The events of `--format jsonl` output."""
    return [json.loads(line)["event"] for line in out.splitlines()]
