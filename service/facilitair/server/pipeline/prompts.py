"""Every prompt the agents get, in one place.

Output contracts the parsers rely on (see parsing.py):
- files: a line `File: relative/path.ext` directly followed by one fenced code block;
- the reviewer's verdict: one JSON object in a ```json fenced block, with the keys shown below.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from facilitair.server.domain import AgentRole

# The version of these templates and of the contracts the parsers read from answers; part of every response cache
# key (cache.py). The rendered prompts are in the key too, so raise it when an answer would be read differently
# from the same prompt (a parser's contract changed): entries written before are then never hit.
TEMPLATES_VERSION = 1

FILE_FORMAT = """Write every file as a line `File: relative/path.ext` followed directly by one fenced code
block holding the whole file, for example:

File: src/example.py
```python
print("hello")
```
Use relative paths with forward slashes and no "..". Do not split one file over several blocks."""

VERDICT_FORMAT = """Answer with exactly one JSON object in a ```json fenced block and nothing after it:
```json
{"approved": false,
 "summary": "one paragraph",
 "issues": [{"severity": "critical|major|minor", "file": "path or empty",
             "description": "what is wrong and how to fix it"}]}
```
Set "approved" to true only if the code is correct, complete and has no critical or major issue."""

# What each agent is asked to be; the pipeline file's `system_prompt` may replace this part.
ROLE = {
    AgentRole.ARCHITECT: (
        "You are the Architect of a software team. Design a solution for the task: components, the files "
        "to create with their responsibilities, key interfaces and data structures, edge cases. Be concrete "
        "and brief; write no implementation code."
    ),
    AgentRole.CODER: (
        "You are the Coder of a software team. Implement the Architect's design completely, with "
        "production-quality code (error handling, types, docstrings). Output only the files."
    ),
    AgentRole.REVIEWER: (
        "You are the Reviewer of a software team. Review the code against the task and the design: "
        "correctness, edge cases, security, clarity. Raise only concrete issues."
    ),
    AgentRole.REFINER: (
        "You are the Refiner of a software team. Fix every issue the Reviewer raised in the code, changing "
        "nothing else. Output every file of the solution again in full, changed or not."
    ),
    AgentRole.TESTER: (
        "You are the Tester of a software team. Write thorough automated tests for the final code with the "
        "language's usual test framework: normal cases, edge cases, errors. Output only test files."
    ),
    AgentRole.DOCUMENTER: (
        "You are the Documenter of a software team. Write the usage documentation for the final code: what "
        "it does, how to install and run it, examples, the API."
    ),
}

# The output contract the parsers rely on: always appended, so a replaced role text cannot break it.
CONTRACT = {
    AgentRole.ARCHITECT: "",
    AgentRole.CODER: FILE_FORMAT,
    AgentRole.REVIEWER: VERDICT_FORMAT,
    AgentRole.REFINER: FILE_FORMAT,
    AgentRole.TESTER: FILE_FORMAT,
    AgentRole.DOCUMENTER: (
        "Your whole answer is the Markdown file itself (it is saved as README.md), with no preamble and no "
        "outer code fence."
    ),
}


def system_prompt(role: AgentRole, role_text: str | None = None) -> str:
    """The system prompt of an agent: its role text (or the configured one) and its output contract."""
    text = (role_text or ROLE[role]).strip()
    contract = CONTRACT[role]
    return f"{text}\n\n{contract}" if contract else text


@dataclass(frozen=True, slots=True)
class StageInputs:
    """What earlier stages produced, as text, for the prompt of the next one.

    `shortened` names the parts ("design", "code", "review", "tests") cut to fit the model's context
    window (pipeline/context.py): their headings say so, and an empty one is said to be left out.
    """

    task: str
    context: dict[str, Any]
    design: str = ""
    code: str = ""
    review: str = ""
    tests: str = ""
    test_results: str = ""  # what the last Test run found (pipeline/testrun.py), when the server runs tests
    shortened: frozenset[str] = frozenset()

    def with_part(self, key: str, text: str) -> StageInputs:
        """A copy whose part `key` (a field carried from an earlier stage) is `text`, marked as shortened."""
        if key not in ("design", "code", "review", "tests", "test_results"):
            raise ValueError(f"{key!r} is not a part carried from an earlier stage")
        changes: dict[str, Any] = {key: text, "shortened": self.shortened | {key}}
        return dataclasses.replace(self, **changes)


# Which earlier parts each agent reads, with their headings, in prompt order.
READS: dict[AgentRole, tuple[tuple[str, str], ...]] = {
    AgentRole.ARCHITECT: (),
    AgentRole.CODER: (("design", "Design (from the Architect)"),),
    AgentRole.REVIEWER: (
        ("design", "Design (from the Architect)"),
        ("code", "Code"),
        ("test_results", "Test results (the Tester's tests, run in a sandbox)"),
    ),
    AgentRole.REFINER: (
        ("design", "Design (from the Architect)"),
        ("code", "Code"),
        ("review", "Review to address"),
        ("test_results", "Failing tests to fix (the Tester's tests, run in a sandbox)"),
    ),
    AgentRole.TESTER: (("design", "Design (from the Architect)"), ("code", "Code")),
    AgentRole.DOCUMENTER: (("design", "Design (from the Architect)"), ("code", "Code"), ("tests", "Tests")),
}
SHORTENED = "shortened to fit the model's context window: only its beginning is here"
LEFT_OUT = "left out: it does not fit the model's context window"


def user_prompt(role: AgentRole, inputs: StageInputs) -> str:
    """The user message for an agent: the task, the context, and what it needs of earlier stages."""
    parts = [f"# Task\n{inputs.task}"]
    if inputs.context:
        parts.append("# Context\n```json\n" + json.dumps(inputs.context, indent=2, sort_keys=True) + "\n```")
    for key, heading in READS[role]:
        text = getattr(inputs, key)
        if key not in inputs.shortened:
            if text:
                parts.append(f"# {heading}\n{text}")
        elif text:
            parts.append(f"# {heading} ({SHORTENED})\n{text}")
        else:
            parts.append(f"# {heading} ({LEFT_OUT})")
    return "\n\n".join(parts)
