"""The files of a run as its stages write them: one per path, versioned, never one kind over another.

A stage that writes a path holding a file of its own kind (the Refiner rewriting the code) makes a new
version of it. A stage that writes a path holding a file of another kind (a Tester that names its test
like the Coder's module, as small models do) does not replace it: its file is kept under a free name
beside it, `<stem>_<kind><ext>` ("src/example_test.py", which pytest and Go find as a test), and the
artifact says which path it asked for. So no file a stage announced is ever lost.

A `File:` line over an empty (or blank) block is no file: it would be delivered as a 0-byte file, or
replace a real version with nothing. Small models write one when they mean "unchanged" or lose the body.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from facilitair.server.domain import Artifact, ArtifactKind
from facilitair.server.pipeline.parsing import MAX_PATH_LENGTH, ParsedFile


@dataclass(slots=True)
class FileSet:
    """The current files by path, each at its latest version."""

    by_path: dict[str, Artifact] = field(default_factory=dict)

    def add(self, files: list[ParsedFile], kind: ArtifactKind, stage: int) -> list[Artifact]:
        """Take one stage's files; return them as stored (moved aside or versioned), in order."""
        files = [f for f in files if f.content.strip()]
        named = {f.path for f in files}
        added = []
        for f in files:
            path, requested = f.path, ""
            current = self.by_path.get(path)
            if current is not None and current.kind != kind:
                path, requested = self._free_path(f.path, kind, named), f.path
                current = None
            version = current.version + 1 if current is not None else 1
            artifact = Artifact(path, kind, f.content, stage, version=version, requested_path=requested)
            self.by_path[path] = artifact
            added.append(artifact)
        return added

    def _free_path(self, path: str, kind: ArtifactKind, named: set[str]) -> str:
        """A path beside `path` that no file holds and the stage does not name itself."""
        directory, base = posixpath.split(path)
        stem, ext = posixpath.splitext(base)
        if not stem:  # ".env": a name that is all extension
            stem, ext = base, ""
        suffix = kind.name.lower()
        number = 1
        while True:
            tail = f"_{suffix}" if number == 1 else f"_{suffix}_{number}"
            room = MAX_PATH_LENGTH - len(directory) - 1 - len(tail) - len(ext)
            candidate = posixpath.join(directory, stem[: max(room, 1)] + tail + ext)
            if candidate not in self.by_path and candidate not in named:
                return candidate
            number += 1

    def render(self, kind: ArtifactKind) -> str:
        """The files of one kind as the next agents read them: `File: path` and a fenced block each."""
        blocks = []
        for a in self.by_path.values():
            if a.kind == kind:
                body = a.content if a.content.endswith("\n") else a.content + "\n"
                blocks.append(f"File: {a.path}\n````\n{body}````")
        return "\n\n".join(blocks)

    def final(self) -> list[Artifact]:
        """The latest version of every path, in the order the paths were first written."""
        return list(self.by_path.values())
