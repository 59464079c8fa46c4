"""The pipeline file: per-agent models, fallbacks and prompts, and the server settings it may set."""

from __future__ import annotations

from pathlib import Path

import pytest

from facilitair.client import FacilitairError, StatusCode
from facilitair.server.domain import AgentRole
from facilitair.server.pipeline import prompts
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.settings import ConfigError, Settings
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import kind
from tests.harness.scripts import scripted, system_of
from tests.harness.servers import ServerFactory

TESTER_ROLE = "You are the Tester of a software team. Write pytest tests only, with hypothesis where it fits."


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


async def test_a_configured_prompt_replaces_the_role_but_keeps_the_output_contract(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    pipeline = write(tmp_path, f'[agents.tester]\nsystem_prompt = "{TESTER_ROLE}"\nmax_tokens = 1234\n')
    script = scripted()
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, pipeline=pipeline)
        events = await h.run("reverse a string")
    assert kind(events[-1]) == "run_completed"
    [tester] = script.requests("tester")
    assert system_of(tester) == f"{TESTER_ROLE}\n\n{prompts.FILE_FORMAT}"
    assert tester["max_tokens"] == 1234
    [coder] = script.requests("coder")
    assert system_of(coder) == prompts.system_prompt(AgentRole.CODER)


async def test_the_file_settings_apply_and_the_environment_wins(
    make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = write(tmp_path, "[settings]\nbudget_usd = 0.001\nmax_runs_per_principal = 3\n")
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, pipeline=pipeline)
        with pytest.raises(FacilitairError) as refused:
            await h.run("reverse a string")  # the plan (~$0.014) is over the file's $0.001 budget
    assert refused.value.code == StatusCode.FAILED_PRECONDITION
    assert "over the budget $0.0010" in refused.value.message
    monkeypatch.setenv("FACILITAIR_MAX_RUNS_PER_PRINCIPAL", "5")
    merged = Settings(pipeline=pipeline).with_file(PipelineConfig.load(pipeline))
    assert merged.budget_usd == 0.001
    assert merged.max_runs_per_principal == 5


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[settings]\nopenai_api_key = 'x'\n", "'openai_api_key' cannot be set in the file"),
        ("[settings]\nmax_runs = -1\n", "settings.max_runs"),
        ("[agents.coder]\nsystem_prompt = ''\n", "agents.coder.system_prompt"),
        ("[agents.painter]\nmodel = 'openai:gpt-4.1'\n", "unknown agent 'painter'"),
        ("[agents.coder]\nmodel = 'openai:a,openai:b,openai:c,openai:d,openai:e,openai:f'\n", "at most 5"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Settings(pipeline=path).with_file(PipelineConfig.load(path))
    assert named in str(err.value)
