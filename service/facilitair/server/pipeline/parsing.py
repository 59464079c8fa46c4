"""Read the agents' output: the files they wrote and the reviewer's verdict.

Both parsers accept what models really produce (a heading before `File:`, backticks around the
path, prose around the JSON) and never raise: bad output becomes a well-defined result.

Model output is untrusted input, and these run on the event loop: both take time linear in the text
(fences.py: no regex there backtracks more than once over a line), and read at most MAX_SCANNED_CHARS
of it, MAX_BLOCKS fenced blocks and MAX_FILES files, so no answer a model can write stops every other
stream for long.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import structlog

from facilitair.server.domain import Issue, Verdict
from facilitair.server.pipeline.fences import Fences
from facilitair.server.pipeline.prompts import VERDICT_FORMAT

log = structlog.get_logger(__name__)

_EXTENSIONS = {
    "python": "py",
    "py": "py",
    "javascript": "js",
    "js": "js",
    "typescript": "ts",
    "ts": "ts",
    "go": "go",
    "rust": "rs",
    "java": "java",
    "markdown": "md",
    "md": "md",
    "bash": "sh",
    "sh": "sh",
}
MAX_PATH_LENGTH = 255
# Far more than any model's longest answer (128k output tokens are about 512k characters): a stage's output
# beyond this is not read for files or a verdict, and a block still open there is not a file.
MAX_SCANNED_CHARS = 2_000_000
# More files than a stage of a run writes; the ones after these are left out (and logged).
MAX_FILES = 200
# The fenced blocks read from one answer (named files or not, for files or a verdict): the rest are left out.
MAX_BLOCKS = 1000


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """A file named in an agent's output."""

    path: str
    content: str


def safe_path(raw: str) -> str | None:
    """A normalised relative path, or None when it is absolute, escapes upwards or is empty."""
    text = raw.strip().replace("\\", "/")
    if not text or len(text) > MAX_PATH_LENGTH or text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return None
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or any(c in text for c in "\0\n\r"):
        return None
    return "/".join(parts)


def parse_files(text: str, *, fallback_stem: str) -> list[ParsedFile]:
    """The files in an agent's output; unnamed code blocks get `fallback_stem` names when none is named."""
    fences = Fences(_scanned(text))
    files: dict[str, str] = {}
    capped = False
    for raw, block in itertools.islice(fences.file_blocks(), MAX_BLOCKS):
        path = safe_path(raw)
        if path is None:
            continue
        if path in files or len(files) < MAX_FILES:
            files[path] = block.body
        else:
            capped = True
    if not files:
        blocks = list(itertools.islice(fences.code_blocks(), MAX_FILES + 1))
        capped = len(blocks) > MAX_FILES
        for i, block in enumerate(blocks[:MAX_FILES], start=1):
            ext = _EXTENSIONS.get(block.info.strip().lower(), "txt")
            files[f"{fallback_stem}_{i}.{ext}" if i > 1 else f"{fallback_stem}.{ext}"] = block.body
    if capped:
        log.warning("model_output_capped", files=MAX_FILES, note="the files after these were left out")
    return [ParsedFile(path, content) for path, content in files.items()]


def _scanned(text: str) -> str:
    """The part of a model's output that is read: at most MAX_SCANNED_CHARS (logged when that cuts it)."""
    if len(text) <= MAX_SCANNED_CHARS:
        return text
    log.warning("model_output_capped", chars=len(text), scanned_chars=MAX_SCANNED_CHARS)
    return text[:MAX_SCANNED_CHARS]


MALFORMED_ISSUE = Issue(
    "major", "", "The review could not be read as the required JSON verdict; review the code again."
)
ECHOED_ISSUE = Issue(
    "major",
    "",
    "The review repeated the example of its output format instead of reviewing the code; review the code again.",
)


def _placeholder_key(text: str) -> str:
    """How a value is compared with the example's: case, surrounding space and a final full stop do not count."""
    return " ".join(text.split()).lower().rstrip(".")


def _strings(value: object) -> set[str]:
    """Every string in decoded JSON, as `_placeholder_key` compares them (iterative: model JSON may nest deep)."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.add(_placeholder_key(item))
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def _example_values(format_text: str) -> frozenset[str]:
    """Every string value of the example verdict in the reviewer's prompt ("one paragraph", "path or empty", ...)."""
    found: set[str] = set()
    for block in Fences(format_text).code_blocks():
        found |= _strings(json.loads(block.body))
    return frozenset(found - {""})


# Read from the prompt itself, so that a changed example is still recognised: small models copy it verbatim
# (small models were seen to echo it), and its `"approved": false` would otherwise pass as a review.
PLACEHOLDERS = _example_values(VERDICT_FORMAT)


def parse_verdict(text: str) -> Verdict:
    """The verdict in the reviewer's output; malformed output (the prompt's own example included) is a non-approval."""
    for candidate in _json_candidates(text):
        try:
            data = json.loads(candidate)
            verdict = _verdict_from(data)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder or str() goes
            continue
        if verdict is None:
            continue
        if _strings(data) & PLACEHOLDERS:
            summary = "The reviewer repeated the format's example instead of a verdict."
            return Verdict(False, summary, [ECHOED_ISSUE], well_formed=False)
        return verdict
    return Verdict(False, "The reviewer's output was not a valid verdict.", [MALFORMED_ISSUE], well_formed=False)


def _json_candidates(text: str) -> list[str]:
    """Fenced JSON blocks, last first (the final answer wins), then the outermost braces."""
    text = _scanned(text)
    blocks = itertools.islice(Fences(text).code_blocks(), MAX_BLOCKS)
    candidates = [b.body for b in blocks if b.info.strip().lower() in ("json", "")][::-1]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    return candidates


def _verdict_from(data: object) -> Verdict | None:
    """Validate the decoded JSON strictly: `approved` must be a boolean."""
    if not isinstance(data, dict) or not isinstance(data.get("approved"), bool):
        return None
    raw_issues = data.get("issues", [])
    if not isinstance(raw_issues, list):
        return None
    issues = []
    for item in raw_issues:
        if isinstance(item, str):
            issues.append(Issue("major", "", item))
        elif isinstance(item, dict) and isinstance(item.get("description"), str):
            severity = str(item.get("severity") or "major").lower()
            issues.append(
                Issue(
                    severity if severity in ("critical", "major", "minor") else "major",
                    str(item.get("file") or ""),
                    item["description"],
                )
            )
        else:
            return None
    summary = data.get("summary")
    return Verdict(bool(data["approved"]), summary if isinstance(summary, str) else "", issues)


def verdict_as_text(verdict: Verdict) -> str:
    """The verdict as the Refiner reads it."""
    lines = [verdict.summary] if verdict.summary else []
    for issue in verdict.issues:
        where = f" ({issue.file})" if issue.file else ""
        lines.append(f"- [{issue.severity}]{where} {issue.description}")
    return "\n".join(lines) or "No issues listed."
