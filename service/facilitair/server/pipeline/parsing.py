"""Read the agents' output: the files they wrote and the reviewer's verdict.

Both parsers accept what models really produce (a heading before `File:`, backticks around the
path, prose around the JSON) and never raise: bad output becomes a well-defined result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from facilitair.server.domain import Issue, Verdict
from facilitair.server.pipeline.prompts import VERDICT_FORMAT

_FILE_BLOCK = re.compile(
    r"""
    ^[ \t]*(?:[#*>\-]+[ \t]*)*                # optional heading or list marker: "### ", "- "
    (?:\*\*)?(?:file(?:name)?|path)(?:\*\*)?   # "File", "**File**", "Filename", "Path"
    [ \t]*:[ \t]*(?:\*\*)?[ \t]*
    `?(?P<path>[^`\n*]+?)`?                   # the path, maybe in backticks
    [ \t]*(?:\*\*)?[ \t]*\n
    (?:[ \t]*\n)*                              # blank lines before the fence
    [ \t]*(?P<fence>`{3,}|~{3,})[^\n]*\n       # opening fence with its info string
    (?P<body>.*?)
    ^[ \t]*(?P=fence)[ \t]*$                   # the same fence closes it
    """,
    re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE,
)
_ANY_BLOCK = re.compile(
    r"^[ \t]*(?P<fence>`{3,})(?P<lang>[^\n]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL
)
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
    files: dict[str, str] = {}
    for match in _FILE_BLOCK.finditer(text):
        path = safe_path(match.group("path"))
        if path is not None:
            files[path] = match.group("body")
    if not files:
        for i, match in enumerate(_ANY_BLOCK.finditer(text), start=1):
            lang = match.group("lang").strip().lower()
            ext = _EXTENSIONS.get(lang, "txt")
            files[f"{fallback_stem}_{i}.{ext}" if i > 1 else f"{fallback_stem}.{ext}"] = match.group("body")
    return [ParsedFile(path, content) for path, content in files.items()]


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
    """Every string in decoded JSON, as `_placeholder_key` compares them."""
    if isinstance(value, str):
        return {_placeholder_key(value)}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(*(_strings(item) for item in items))


def _example_values(format_text: str) -> frozenset[str]:
    """Every string value of the example verdict in the reviewer's prompt ("one paragraph", "path or empty", ...)."""
    found: set[str] = set()
    for block in _ANY_BLOCK.finditer(format_text):
        found |= _strings(json.loads(block.group("body")))
    return frozenset(found - {""})


# Read from the prompt itself, so that a changed example is still recognised: small models copy it verbatim
# (small models were seen to echo it), and its `"approved": false` would otherwise pass as a review.
PLACEHOLDERS = _example_values(VERDICT_FORMAT)


def parse_verdict(text: str) -> Verdict:
    """The verdict in the reviewer's output; malformed output (the prompt's own example included) is a non-approval."""
    for candidate in _json_candidates(text):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        verdict = _verdict_from(data)
        if verdict is None:
            continue
        if _strings(data) & PLACEHOLDERS:
            summary = "The reviewer repeated the format's example instead of a verdict."
            return Verdict(False, summary, [ECHOED_ISSUE], well_formed=False)
        return verdict
    return Verdict(False, "The reviewer's output was not a valid verdict.", [MALFORMED_ISSUE], well_formed=False)


def _json_candidates(text: str) -> list[str]:
    """Fenced JSON blocks, last first (the final answer wins), then the outermost braces."""
    blocks = [m.group("body") for m in _ANY_BLOCK.finditer(text) if m.group("lang").strip().lower() in ("json", "")]
    candidates = list(reversed(blocks))
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
