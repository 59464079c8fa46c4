"""What small models really do, end to end: echo the prompt's example, fill their context window, stop on length.

A real server and client, the official SDKs against the fake vendors (tests/fakes), which can enforce a context
window as a small local model's server does (provider-wire-formats.md, "What real servers do").
"""

from __future__ import annotations

from facilitair.server.pipeline import prompts
from tests.conftest import ServerFactory, kind, of_kind, scripted
from tests.fakes.providers import FakeOpenAI, Reply

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"


# ----- the reviewer echoes its format's example (issue 11, item 15) -----


async def test_a_reviewer_that_echoes_the_example_is_a_malformed_verdict(make_server: ServerFactory) -> None:
    # What a small model answered: the example block of its prompt, verbatim.
    echoed = prompts.VERDICT_FORMAT.split("\n", 1)[1].rsplit("\n", 1)[0]
    assert '"summary": "one paragraph"' in echoed
    script = scripted(reviewer=Reply(chunks=[echoed[:40], echoed[40:]]))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, model=MINI)
        events = await h.run(TASK, max_refinements=1)

    assert kind(events[-1]) == "run_completed", events[-1]
    first, second = of_kind(events, "review_verdict")
    assert (first.approved, first.well_formed, first.summary) == (
        False,
        False,
        "The reviewer repeated the format's example instead of a verdict.",
    )
    assert [i.description for i in first.issues] == [
        "The review repeated the example of its output format instead of reviewing the code; review the code again."
    ]
    assert "one paragraph" not in first.summary
    assert not any(i.severity == "critical|major|minor" or i.file == "path or empty" for i in first.issues)
    assert (second.approved, second.well_formed) == (False, False)
    # The refiner is told to look again, not given the example as if it were an issue.
    refiner_prompt = script.requests("refiner")[0]["messages"][-1]["content"]
    assert "repeated the example" in refiner_prompt
    assert "path or empty" not in refiner_prompt
    assert not events[-1].run_completed.result.approved
