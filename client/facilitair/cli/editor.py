"""Editing a paused stage's output in $EDITOR: its files (or its text) in a temporary folder, what changed back.

The editor is `$EDITOR` (then `$VISUAL`, then `vi`), split like a shell would ("code --wait" works), run on
this terminal with every file to edit as an argument; a non-zero exit sends nothing, as git does.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from facilitair.cli.common import CommandFailed
from facilitair.client import Agent, Approval, ApprovalRequest

# Agents whose output is a text, edited as such (the server takes their edits as edited_text).
_TEXT_AGENTS = (Agent.ARCHITECT, Agent.REVIEWER)
# A bound on how long the editor may stay open: a person editing a design takes minutes; a day is a stuck one.
EDITOR_TIMEOUT = 24 * 3600.0


def editor_command() -> list[str]:
    """The editor to run, as words."""
    text = os.environ.get("EDITOR") or os.environ.get("VISUAL") or "vi"
    words = shlex.split(text)
    if not words:
        raise CommandFailed("EDITOR is empty: set it to your editor, e.g. EDITOR=nano")
    return words


def _text_name(gate: ApprovalRequest) -> str:
    """The file the stage's text is edited in: "architect-design.md", "coder-stage-2.md"."""
    agent = gate.agent.name.lower() if gate.agent is not Agent.UNSPECIFIED else "stage"
    return f"{agent}-design.md" if gate.agent is Agent.ARCHITECT else f"{agent}-stage-{gate.stage}.md"


def _chosen(gate: ApprovalRequest, paths: Sequence[str]) -> dict[str, str]:
    """path -> content of the files to edit: those named, else all the stage's files; {} for its text.

    The Architect's and the Reviewer's output is a text (a file the Architect wrote is that design again), so
    without PATHs their text is edited; the Coder's and the Tester's is files.
    """
    files = {a.path: a.content for a in gate.files}
    unknown = [p for p in paths if p not in files]
    if unknown:
        have = ", ".join(files) or "none"
        raise CommandFailed(f"the stage did not produce {', '.join(unknown)} (its files: {have})")
    if paths:
        return {p: files[p] for p in paths}
    return {} if gate.agent in _TEXT_AGENTS else files


def _place(root: Path, relative: str) -> Path:
    """Where a produced file goes in the temporary folder; a path that would leave it is refused."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise CommandFailed(f"cannot edit {relative!r}: not a relative path")
    return root.joinpath(*parts)


async def _run_editor(paths: list[Path]) -> None:
    words = editor_command()
    try:
        proc = await asyncio.create_subprocess_exec(*words, *map(str, paths))
    except OSError as exc:
        raise CommandFailed(f"cannot start the editor {words[0]!r} ({exc.strerror}): set EDITOR") from None
    try:
        async with asyncio.timeout(EDITOR_TIMEOUT):
            code = await proc.wait()
    finally:
        if proc.returncode is None:  # cancelled (the gate was decided elsewhere) or timed out: close it
            proc.kill()
            await proc.wait()
    if code != 0:
        raise CommandFailed(f"the editor {words[0]!r} exited with {code}; nothing was sent")


async def edit_in_editor(gate: ApprovalRequest, paths: Sequence[str] = (), comment: str = "") -> Approval | None:
    """Let the person edit the gate's files (or text); the EDIT to send, or None when nothing changed."""
    files = _chosen(gate, paths)
    with tempfile.TemporaryDirectory(prefix="facilitair-edit-") as tmp:
        root = Path(tmp)
        before = files or {_text_name(gate): gate.text}
        places = {path: _place(root, path) for path in before}
        for path, place in places.items():
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_text(before[path], encoding="utf-8")
        await _run_editor(list(places.values()))
        try:
            after = {path: place.read_text(encoding="utf-8") for path, place in places.items()}
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandFailed(f"cannot read the edited file back ({exc}); nothing was sent") from None
    changed = {path: text for path, text in after.items() if text != before[path]}
    if not changed:
        return None
    if files:
        return Approval.edit(files=changed, comment=comment)
    text = next(iter(changed.values()))
    if not text.strip():  # an empty edited_text means "keep the text": say so rather than send the old one
        raise CommandFailed("the edited text is empty; nothing was sent (to stop the run, reject it)")
    return Approval.edit(text=text, comment=comment)
