"""Writing a run's files: `--output-dir` (files, plus .facilitair/run.json and .facilitair/events.jsonl)
and `facilitair files RUN_ID DIR`.

The CLI's own records live under `.facilitair/`, a folder no produced file may write into, so a run
that produces `run.json` or `events.jsonl` cannot overwrite them (nor they it).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from google.protobuf import json_format

from facilitair.cli.inputs import UsageError
from facilitair.cli.render import event_json
from facilitair.client import EventKind, event_kind
from facilitair.v1 import orchestrator_pb2 as pb

RECORDS = ".facilitair"


def _inside(root: Path, relative: str) -> Path | None:
    """The file's place under root, or None if the path would leave it or enter RECORDS."""
    path = PurePosixPath(relative)
    parts = path.parts
    if not parts or path.is_absolute() or ".." in parts or parts[0] == RECORDS:
        return None
    target = (root / Path(*parts)).resolve()
    return target if target.is_relative_to(root.resolve()) else None


def make_folder(root: Path, named: str = "") -> None:
    """Create `root` (and its parents) or refuse it in one line: it is a file, or it cannot be made there."""
    where = f"{named} {root}" if named else str(root)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{where}: is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # A parent that is a file says ENOTDIR or EEXIST; /proc, a read-only disk or no permission say why.
        why = "a part of it is a file" if exc.errno in (errno.ENOTDIR, errno.EEXIST) else exc.strerror
        raise UsageError(f"{where}: cannot create it ({why})") from None


def write_files(root: Path, artifacts: Iterable[pb.Artifact]) -> tuple[list[str], list[str]]:
    """Write each artifact under root; return (paths written, paths refused)."""
    written, refused = [], []
    for artifact in artifacts:
        target = _inside(root, artifact.path)
        if target is None:
            refused.append(artifact.path)
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(artifact.content, encoding="utf-8")
        except OSError as exc:  # a produced path through a file already there, a full disk: say which file
            raise UsageError(f"cannot write {target}: {exc.strerror}") from None
        written.append(artifact.path)
    return written, refused


class OutputDir:
    """Writes events as they come and the files when the run ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_folder(root, "--output-dir")
        make_folder(root / RECORDS, "--output-dir")
        self._events = (root / RECORDS / "events.jsonl").open("w", encoding="utf-8")

    def event(self, event: pb.RunEvent) -> None:
        """Append one event to events.jsonl, in the shape `--format jsonl` prints."""
        self._events.write(event_json(event) + "\n")

    def finish(self, final: pb.RunEvent | None) -> tuple[list[str], list[str]]:
        """Write run.json and, for a completed run, its files; return (paths written, paths refused)."""
        self._events.close()
        written: list[str] = []
        refused: list[str] = []
        if final is not None and event_kind(final) is EventKind.RUN_COMPLETED:
            written, refused = write_files(self.root, final.run_completed.result.artifacts)
        run = json_format.MessageToDict(final) if final is not None else {}
        (self.root / RECORDS / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        return written, refused
