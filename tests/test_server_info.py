"""GetServerInfo, `Client.server_info()` and `facilitair info`: a person learns from the server what it offers.

Real servers on 127.0.0.1:0 with the fake vendors behind them; the CLI runs as a subprocess. The models the
server reports are checked against the models a run with no model really asks, so the answer cannot drift
from the resolution requests go through.
"""

from __future__ import annotations

import asyncio
import json
from importlib import metadata
from pathlib import Path

import pytest

from facilitair.client import Client, FacilitairError, StatusCode, StoreKind, SyncClient
from tests.fakes.providers import FakeAnthropic, FakeOpenAI
from tests.harness.cli import BUF, cli
from tests.harness.events import of_kind
from tests.harness.scripts import AGENTS, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"
KEY = "alice-key-0123456789abcdef"
PIPELINE = f"""
[agents.coder]
model = "{SONNET}"

[agents.tester]
model = "{SONNET},{MINI}"

[settings]
max_runs = 12
max_runs_per_principal = 3
runs_per_minute = 7.5
budget_usd_max = 5.0
budget_tokens = 900000
run_timeout = 600
max_refinements = 1
"""


def pipeline_file(tmp_path: Path) -> Path:
    """The pipeline file above, written in tmp_path."""
    path = tmp_path / "pipeline.toml"
    path.write_text(PIPELINE)
    return path


async def test_server_info_says_what_the_server_offers_and_runs_get_those_models(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    async with FakeOpenAI(scripted()) as oa, FakeAnthropic(scripted()) as an:
        h = await make_server(openai=oa, anthropic=an, model=MINI, pipeline=pipeline_file(tmp_path))
        info = await h.client.server_info()
        events = await h.run(TASK)  # no model in the request: the server's resolution decides

    assert info.version == metadata.version("facilitair")
    assert list(info.providers) == ["anthropic", "local", "openai"]  # local: the dev extra installs its engine
    assert info.default_model == MINI
    expected = {agent: MINI for agent in AGENTS} | {"coder": SONNET, "tester": f"{SONNET},{MINI}"}
    assert dict(info.agent_models) == expected
    asked = {AGENTS[s.agent - 1]: s.model for s in of_kind(events, "stage_started")}  # Agent numbers from 1
    assert set(asked) == {"architect", "coder", "reviewer", "tester", "documenter"}
    assert asked == {agent: expected[agent].split(",")[0] for agent in asked}  # the first model of each list
    limits = info.limits
    assert (limits.max_runs, limits.max_runs_per_principal, limits.runs_per_minute) == (12, 3, 7.5)
    assert not limits.HasField("max_cost_usd_default")  # no cost budget unless a request sets one
    assert (limits.max_cost_usd_limit, limits.max_tokens_default) == (5.0, 900000)
    assert not limits.HasField("max_tokens_limit")
    assert limits.run_timeout.ToSeconds() == 600
    assert (limits.max_refinements_default, limits.max_refinements_limit) == (1, 10)
    assert StoreKind(info.store) is StoreKind.SQLITE
    assert info.replica_id == h.server.runs.replica_id
    assert info.replica_id


async def test_server_info_needs_a_key_like_every_call(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, api_keys=f"alice:{KEY}")
        async with Client(h.target) as anonymous, Client(h.target, api_key="wrong-key-0123456789") as wrong:
            for client in (anonymous, wrong):
                with pytest.raises(FacilitairError) as refused:
                    await client.server_info()
                assert refused.value.code == StatusCode.UNAUTHENTICATED
        async with Client(h.target, api_key=KEY) as alice:
            assert list((await alice.server_info()).providers) == ["local", "openai"]


async def test_server_info_reports_the_postgresql_store(pg_url: str, make_server: ServerFactory) -> None:
    # pg_url first: fixtures end in reverse order, so the server stops before its database is dropped.
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, database_url=pg_url)
        info = await h.client.server_info()
    assert StoreKind(info.store) is StoreKind.POSTGRESQL
    assert info.replica_id == h.server.runs.replica_id


async def test_sync_client_server_info(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, budget_usd=0.5, budget_tokens_max=50_000)

        def ask() -> tuple[list[str], float, int]:
            with SyncClient(h.target) as client:
                info = client.server_info()
            return list(info.providers), info.limits.max_cost_usd_default, info.limits.max_tokens_limit

        assert await asyncio.to_thread(ask) == (["local", "openai"], 0.5, 50_000)


async def test_cli_info_for_people_and_as_json(make_server: ServerFactory, tmp_path: Path) -> None:
    async with FakeOpenAI(scripted()) as oa, FakeAnthropic(scripted()) as an:
        h = await make_server(openai=oa, anthropic=an, model=MINI, pipeline=pipeline_file(tmp_path))
        code, out, err = await cli(h.target, "info")
        json_code, json_out, _ = await cli(h.target, "info", "--json")
    replica = h.server.runs.replica_id
    version = metadata.version("facilitair")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"server      facilitair {version} at {h.target} (replica {replica})",
        "store       sqlite (one server process)",
        f"web         http://127.0.0.1:{h.server.http_port} (the runs' pages, the HTTP API)",
        "providers   anthropic, local, openai",
        f"models      default     {MINI}",
        f"            architect   {MINI}",
        f"            coder       {SONNET}",
        f"            reviewer    {MINI}",
        f"            refiner     {MINI}",
        f"            tester      {SONNET},{MINI}",
        f"            documenter  {MINI}",
        "            (a request's --model or --agent-model wins over these)",
        "tests       not run (--sandbox off)",
        "runs        12 in flight on the server, 3 per caller; 7.5 new runs a minute per caller",
        "timeout     10m00s per run",
        "refinements 1 by default, at most 10 (--max-refinements N)",
        "cost        none by default, at most $5 (--max-cost USD)",
        "tokens      900000 by default, no upper bound (--max-tokens N)",
    ]
    assert json_code == 0
    doc = json.loads(json_out)
    assert doc["version"] == version
    assert doc["providers"] == ["anthropic", "local", "openai"]
    assert doc["agentModels"]["coder"] == SONNET
    assert doc["store"] == "STORE_KIND_SQLITE"
    assert doc["limits"]["maxRunsPerPrincipal"] == 3
    assert doc["limits"]["maxTokensDefault"] == "900000"  # 64-bit integers are strings in protobuf JSON
    assert "maxCostUsdDefault" not in doc["limits"]  # unset: no budget, not a budget of 0
    assert doc["replicaId"] == replica
    assert doc["sandbox"] == {"kind": "off", "available": False, "detail": "tests are not run (--sandbox off)"}


async def test_cli_info_without_a_server_or_a_key(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, api_keys=f"alice:{KEY}")
        refused = await cli(h.target, "info")
    assert refused[0] == 4
    assert "UNAUTHENTICATED" in refused[2]
    await h.stop()
    gone = await cli(h.target, "info")
    assert gone == (3, "", f"cannot reach facilitair at {h.target} - is `facilitair serve` running?\n")


async def test_generic_tools_find_get_server_info_through_reflection(make_server: ServerFactory) -> None:
    """The docs' `buf curl` line (docs/clients.md): no stubs, only the server's reflection."""
    assert BUF is not None, "buf comes with `pip install -e .[dev]` (the buf-bin package)"
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        proc = await asyncio.create_subprocess_exec(
            BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
            f"http://{h.target}/facilitair.v1.OrchestratorService/GetServerInfo",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert (doc["version"], doc["providers"], doc["store"]) == (
        metadata.version("facilitair"),
        ["local", "openai"],
        "STORE_KIND_SQLITE",
    )
