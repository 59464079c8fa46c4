"""The benchmark harness works: one tiny run of `python -m bench --quick`, and its pure parts.

Benchmarks are not tests: nothing here asserts a timing, only that every result is produced.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import patches
from bench.fake import MIN_SIZE, Directive, stamped
from bench.procs import with_descendants
from bench.profile import summarise
from bench.report import table
from bench.stats import Sampler, median, percentile, ratio
from tests.harness.pg import ENV_URL, PgServer

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_produces_every_result(tmp_path: Path, pg_server: PgServer) -> None:
    out = tmp_path / "results.json"
    # The replica scenarios use the session's PostgreSQL, as the tests do.
    env = {**os.environ, ENV_URL: pg_server.admin_url}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert {"date", "command", "machine", "params", "results", "elapsed_s"} <= set(data)
    res = data["results"]
    assert set(res) == {
        "throughput", "load", "watchers", "first_event", "replay", "sqlite", "replicas", "cross_watch", "takeover"
    }  # fmt: skip
    assert set(res["throughput"]["tokens_per_s"]) == {"server", "server_coalesced", "baseline"}
    assert {"ratio_server", "ratio_coalesced", "tokens_per_coalesced_message"} <= set(res["throughput"])
    [load] = res["load"]
    assert {"p50_ms", "p99_ms", "cpu_percent", "rss_per_run_kib", "failed_runs"} <= set(load["server"])
    assert {"p50_ms", "p99_ms", "cpu_percent"} <= set(load["baseline"])
    assert load["server"]["failed_runs"] == 0
    assert "kib_per_watcher" in res["watchers"]
    assert {"server_p50_ms", "server_p99_ms", "baseline_p50_ms"} <= set(res["first_event"])
    assert set(res["replay"]["ms"]) == {"server", "server_coalesced", "baseline"}
    assert len(res["sqlite"]["fixed_batches"]) == 4
    assert "events_per_commit" in res["sqlite"]["event_log"]
    [replicas] = res["replicas"]
    assert set(replicas["configs"]) == {"baseline", "sqlite", "postgres_workers_1", "postgres_workers_2"}
    for name, config in replicas["configs"].items():
        assert config["tokens_missing"] == 0, name
        assert config["failed_runs"] == 0, name
        assert config["cpu_us_per_token"] > 0, name
    assert "postgres_cpu_percent" in replicas["configs"]["postgres_workers_2"]
    cross = res["cross_watch"]
    assert cross["remote_short"] == 0
    assert cross["incomplete_runs"] == 0
    assert cross["samples"] > 0
    assert len(res["takeover"]["samples_s"]) == 1
    assert "| measurement (medians) |" in proc.stdout
    assert "PostgreSQL --workers 2: p50 / p99 relay latency" in proc.stdout
    assert "takeover after SIGKILL of the owner" in proc.stdout


def test_sampler_counts_a_group_and_its_new_members() -> None:
    # The child burns 0.3 s of CPU, says so, and stays until its stdin closes (a member gone before the end of
    # the window is not counted).
    burn = (
        "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
        "print('done', flush=True)\nsys.stdin.read()"
    )

    async def measure() -> tuple[dict[str, dict[str, float]], list[int], int]:
        async with Sampler({"group": lambda: with_descendants(os.getpid()), "self": "self"}) as sampler:
            # It joins the group during the window: all its CPU is counted.
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", burn, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            assert child.stdout is not None
            assert child.stdin is not None
            assert await child.stdout.readline() == b"done\n"
            family = with_descendants(os.getpid())
        child.stdin.close()
        await child.wait()
        return sampler.result, family, child.pid

    result, family, child_pid = asyncio.run(measure())
    assert family[0] == os.getpid()
    assert child_pid in family
    # The group is this process plus the child: at least the child's 0.3 s more than this process alone.
    group, alone = result["group"], result["self"]
    assert group["cpu_percent"] > alone["cpu_percent"]
    assert group["rss_peak_mib"] > alone["rss_peak_mib"]


def test_directive_survives_the_prompt() -> None:
    directive = Directive(tokens={"coder": 500, "tester": 3}, default_tokens=2, rate=25.0, size=32, hold=-1.0)
    prompt = f"# Task\n{directive.task()}\n\n# Design\n..."
    assert Directive.parse(prompt) == directive
    assert Directive.parse("no directive here") == Directive()
    assert directive.count("coder") == 500
    assert directive.count("architect") == 2


def test_stamped_token_has_the_size_and_starts_with_the_clock() -> None:
    token = stamped(MIN_SIZE + 5)
    assert len(token) == MIN_SIZE + 5
    assert token[:19].isdigit()


def test_statistics() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert math.isnan(percentile([], 50))
    assert median([1, 2, 3, 4]) == 2.5
    assert math.isnan(ratio(1.0, 0.0))


def test_profile_summary(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): MainThread;main (service/facilitair/server/servicer.py:1);encode (json/encoder.py:2) 3\n"
        "thread (1): MainThread;main (service/facilitair/server/servicer.py:1) 1\n",
        encoding="utf-8",
    )
    summary = summarise(raw)
    assert summary["samples"] == 4
    assert dict(summary["by_library_percent"]) == {"json": 75.0, "facilitair": 25.0}
    assert summary["top_inclusive_percent"][0] == ("main (servicer.py)", 100.0)


def test_table_shows_missing_values_as_dashes() -> None:
    results = {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "python -m bench",
        "machine": {"cores": 2, "cpu": "x", "python": "3.11", "grpcio": "1"},
        "results": {
            "replay": {
                "events": 10,
                "ms": {"server": 1.0, "server_coalesced": math.nan, "baseline": 2.0},
                "ratio_server": 0.5,
                "ratio_coalesced": math.nan,
            }
        },
    }
    text = table(results)
    assert "| 4. replay of a finished 10-event run (ms) | 1.0 | 2.0 | 0.50x | <= 200 ms: met |" in text
    assert "| - |" in text


def test_patches_name_the_alternatives_of_what_was_adopted() -> None:
    assert patches.apply([]) == "auto"
    assert patches.apply(["asyncio"]) == "asyncio"
    with pytest.raises(ValueError, match="unknown patch 'uvloop'; known: httpx, asyncio"):
        patches.apply(["uvloop"])  # adopted: the default now, no longer a patch
