"""The verdict parser on what models really write, the prompt's own example included (issue 11, item 15)."""

from __future__ import annotations

import json

import pytest

from facilitair.server.domain import Issue
from facilitair.server.pipeline import prompts
from facilitair.server.pipeline.parsing import parse_verdict

# The example block of the reviewer's prompt, exactly as the model is shown it.
EXAMPLE = prompts.VERDICT_FORMAT.split("```json\n", 1)[1].split("```", 1)[0]
ISSUE = {"severity": "major", "file": "src/rev.py", "description": "rev(None) raises; check the argument."}


def fenced(data: object) -> str:
    """A verdict as a model writes it: prose, then the JSON in a ```json block."""
    return f"Here is my review.\n```json\n{json.dumps(data)}\n```\n"


def with_issue(**changes: str) -> dict[str, object]:
    """A real rejection whose one issue has `changes` applied."""
    return {"approved": False, "summary": "One real problem.", "issues": [{**ISSUE, **changes}]}


@pytest.mark.parametrize(
    ("text", "approved", "summary", "issues"),
    [
        (fenced({"approved": True, "summary": "Correct.", "issues": []}), True, "Correct.", []),
        (fenced(with_issue()), False, "One real problem.", [Issue("major", "src/rev.py", ISSUE["description"])]),
        # An empty file is what the prompt allows ("path or empty").
        (fenced(with_issue(file="")), False, "One real problem.", [Issue("major", "", ISSUE["description"])]),
        # Plain strings as issues, and prose after the JSON without a fence.
        ('{"approved": false, "summary": "s", "issues": ["add a docstring"]} thanks', False, "s",
         [Issue("major", "", "add a docstring")]),
        # A word of the example inside real text is not the example.
        (fenced(with_issue(description="Write one paragraph of docs: what is wrong and how to fix it is unclear.")),
         False, "One real problem.",
         [Issue("major", "src/rev.py", "Write one paragraph of docs: what is wrong and how to fix it is unclear.")]),
    ],
    ids=["approval", "rejection", "empty-file", "string-issue", "example-words-in-real-text"],
)  # fmt: skip
def test_a_real_verdict_is_read_as_written(text: str, approved: bool, summary: str, issues: list[Issue]) -> None:
    verdict = parse_verdict(text)
    assert verdict.well_formed
    assert (verdict.approved, verdict.summary, verdict.issues) == (approved, summary, issues)


@pytest.mark.parametrize(
    "text",
    [
        EXAMPLE,  # the example, verbatim, as a small model copied it
        f"```json\n{EXAMPLE}```",
        "Sure!\n" + prompts.VERDICT_FORMAT,  # the whole format section echoed
        fenced({"approved": True, "summary": "one paragraph", "issues": []}),  # an approval with the example summary
        fenced({"approved": True, "summary": "One Paragraph.", "issues": []}),  # the same in other case, with a dot
        fenced(with_issue(severity="critical|major|minor")),
        fenced(with_issue(file="path or empty")),
        fenced(with_issue(description="what is wrong and how to fix it")),
        fenced(with_issue(description="  What is wrong and how to fix it.  ")),
    ],
    ids=[
        "example",
        "example-fenced",
        "whole-format",
        "summary",
        "summary-case",
        "severity",
        "file",
        "description",
        "description-spaced",
    ],
)
def test_the_prompts_own_example_is_a_malformed_verdict(text: str) -> None:
    verdict = parse_verdict(text)
    assert not verdict.well_formed
    assert not verdict.approved
    assert len(verdict.issues) == 1
    assert "example" in verdict.issues[0].description


@pytest.mark.parametrize(
    "text",
    [
        "Looks good to me, ship it!",
        fenced({"approved": "yes", "summary": "s", "issues": []}),
        fenced({"approved": True, "issues": "none"}),
        fenced({"approved": False, "issues": [{"severity": "major"}]}),
        "```json\n{not json}\n```",
        "",
    ],
    ids=["prose", "approved-not-bool", "issues-not-list", "issue-without-description", "bad-json", "empty"],
)
def test_output_that_is_no_verdict_is_malformed_and_not_approved(text: str) -> None:
    verdict = parse_verdict(text)
    assert (verdict.well_formed, verdict.approved) == (False, False)
    assert len(verdict.issues) == 1
    assert verdict.issues[0].description
