"""What `run` sends: the task (argument, `-` for stdin, or --task-file) and the context (--context,
--context-file, and --file for existing code, put into context as {"files": {path: content}})."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

# The server refuses a context over 64 KiB; checking here names the files to leave out.
MAX_CONTEXT_BYTES = 64 * 1024


class UsageError(Exception):
    """A command line the CLI can refuse before asking the server."""


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or a UsageError naming the flag and the problem."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path}: not UTF-8 text") from None


def read_task(task: str | None, task_file: Path | None, stdin: IO[str] = sys.stdin) -> str:
    """The task from the argument, stdin (`-`) or a file."""
    if task is not None and task_file is not None:
        raise UsageError("give the task as an argument or with --task-file, not both")
    if task_file is not None:
        return read_text(task_file, "--task-file").strip()
    if task is None:
        raise UsageError("no task: facilitair run TASK (or `-` to read it from stdin, or --task-file FILE)")
    if task == "-":
        if stdin.isatty():
            print("reading the task from stdin; end it with Ctrl-D", file=sys.stderr)
        return stdin.read().strip()
    return task


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object")
    return value


def build_context(inline: str | None, context_file: Path | None, files: Sequence[Path]) -> dict[str, Any] | None:
    """The request's context, or None; UsageError when it is not a JSON object or too large."""
    if inline is not None and context_file is not None:
        raise UsageError("give --context or --context-file, not both")
    context: dict[str, Any] = {}
    if inline is not None:
        context = _json_object(inline, "--context")
    elif context_file is not None:
        context = _json_object(read_text(context_file, "--context-file"), f"--context-file {context_file}")
    if files:
        if "files" in context:
            raise UsageError('--file puts files into the context\'s "files", which the context already has')
        contents: dict[str, str] = {}
        for path in files:
            key = path.as_posix()
            if key in contents:
                raise UsageError(f"--file {key} is given twice")
            contents[key] = read_text(path, "--file")
        context["files"] = contents
    size = len(json.dumps(context, ensure_ascii=False).encode("utf-8"))
    if size > MAX_CONTEXT_BYTES:
        biggest = max(context.get("files", {"": ""}).items(), key=lambda item: len(item[1]))[0]
        hint = f" (the largest --file is {biggest})" if biggest else ""
        raise UsageError(f"the context is {size // 1024} KiB; the server takes at most 64 KiB{hint}")
    return context or None


def agent_models(pairs: Sequence[str]) -> dict[str, str]:
    """--agent-model AGENT=PROVIDER:MODEL, repeated."""
    out = {}
    for pair in pairs:
        agent, sep, model = pair.partition("=")
        if not sep:
            raise UsageError(f"--agent-model {pair!r} is not AGENT=PROVIDER:MODEL")
        out[agent.strip()] = model.strip()
    return out
