"""`--output-dir`: the final files, `run.json` and `events.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from google.protobuf import json_format

from facilitair.v1 import orchestrator_pb2 as pb


def _inside(root: Path, relative: str) -> Path | None:
    """The file's place under root, or None if the path would leave it (never trust a path blindly)."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        return None
    target = (root / Path(*parts)).resolve()
    return target if target.is_relative_to(root.resolve()) else None


class OutputDir:
    """Writes events as they come and the files when the run ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._events = (root / "events.jsonl").open("w", encoding="utf-8")

    def event(self, event: pb.RunEvent) -> None:
        """Append one event to events.jsonl."""
        self._events.write(json.dumps(json_format.MessageToDict(event), separators=(",", ":")) + "\n")

    def finish(self, final: pb.RunEvent | None) -> list[str]:
        """Write run.json and, for a completed run, its files; return the paths written."""
        self._events.close()
        written = []
        if final is not None and final.WhichOneof("payload") == "run_completed":
            for artifact in final.run_completed.result.artifacts:
                target = _inside(self.root, artifact.path)
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(artifact.content, encoding="utf-8")
                written.append(artifact.path)
        run = json_format.MessageToDict(final) if final is not None else {}
        (self.root / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        return written
