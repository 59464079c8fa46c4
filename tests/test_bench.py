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

from bench import compare, patches
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
        "throughput", "load", "watchers", "first_event", "replay", "sse_cpu", "sse_watchers", "sqlite", "replicas",
        "cross_watch", "takeover", "db_rtt", "sse_live_cpu",
    }  # fmt: skip
    assert set(res["throughput"]["tokens_per_s"]) == {"server", "server_coalesced", "baseline"}
    assert {"ratio_server", "ratio_coalesced", "tokens_per_coalesced_message"} <= set(res["throughput"])
    [load] = res["load"]
    assert {"p50_ms", "p99_ms", "cpu_percent", "rss_per_run_kib", "failed_runs"} <= set(load["server"])
    assert {"p50_ms", "p99_ms", "cpu_percent"} <= set(load["baseline"])
    assert load["server"]["failed_runs"] == 0
    assert load["server"]["tokens_missing"] == 0
    assert "kib_per_watcher" in res["watchers"]
    assert {"server_p50_ms", "server_p99_ms", "baseline_p50_ms"} <= set(res["first_event"])
    assert set(res["replay"]["ms"]) == {"server", "server_coalesced", "baseline"}
    assert set(res["sse_cpu"]["us_per_event"]) == {"sse", "watchrun"}
    assert res["sse_cpu"]["events"] == res["replay"]["events"]
    assert "kib_per_watcher" in res["sse_watchers"]
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
    assert set(res["db_rtt"]["rtt_ms"]) == {"0", "10"}  # the quick RTTs, each through the delay proxy
    for rtt, row in res["db_rtt"]["rtt_ms"].items():
        assert (row["failed_runs"], row["tokens_missing"]) == (0, 0), rtt
    assert "| measurement (medians) |" in proc.stdout
    assert "PostgreSQL --workers 2: p50 / p99 relay latency" in proc.stdout
    assert "takeover after SIGKILL of the owner" in proc.stdout
    # Compared with the record: quick sizes have no recorded counterpart, so nothing can be flagged.
    assert data["comparison"]["regressed"] == []
    assert "No figure of this invocation has a recorded counterpart" in proc.stdout


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
    # By stage of the token's path: both samples are the servicer's, whatever their innermost frame.
    assert dict(summary["token_path_percent"]) == {"watcher: servicer and guard": 100.0}


def test_profile_stages_the_innermost_part_of_the_token_path(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): MainThread;run (attempts.py:1);stream (facilitair/server/providers/chat_chunks.py:2);"
        "raw_decode (json/decoder.py:3) 2\n"
        "thread (1): MainThread;Runner.run (asyncio/runners.py:1) 1\n"
        "thread (2): Thread-1;Thread.run (threading.py:1);insert_rows (store/sqlite_batch.py:9) 1\n",
        encoding="utf-8",
    )
    assert dict(summarise(raw)["token_path_percent"]) == {
        "provider chunk parsed (json)": 50.0,
        "event loop itself (uvloop, grpc sends)": 25.0,
        "store writer thread (SQLite)": 25.0,
    }


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
    with pytest.raises(ValueError, match="unknown patch 'uvloop'; known: httpx, asyncio, messages"):
        patches.apply(["uvloop"])  # adopted: the default now, no longer a patch


def _load_result(p99_ms: float, delivered: float, bare_p99_ms: float = 2.0) -> dict[str, object]:
    return {
        "runs": 200,
        "rate": 25.0,
        "server": {"p50_ms": 5.0, "p99_ms": p99_ms, "delivered_tokens_per_s": delivered, "cpu_us_per_token": 180.0},
        "baseline": {"p50_ms": 0.5, "p99_ms": bare_p99_ms, "cpu_us_per_token": 60.0},
        "passes": {"server": [{"p99_ms": p99_ms}], "baseline": []},
    }


def test_comparison_flags_a_worse_figure_and_not_a_better_or_equal_one() -> None:
    recorded = compare.figures({"load": [_load_result(p99_ms=50.0, delivered=5000.0)]})
    worse = compare.figures({"load": [_load_result(p99_ms=12_800.0, delivered=3494.0)]})
    better = compare.figures({"load": [_load_result(p99_ms=10.0, delivered=5000.0)]})
    verdicts = {r.name: r.verdict for r in compare.compare(recorded, worse)}
    assert verdicts["load 200x25: p99_ratio"] == "REGRESSED"
    assert verdicts["load 200x25: delivered_fraction"] == "REGRESSED"
    assert verdicts["load 200x25: cpu_ratio"] == "same"
    # Absolute figures that have a ratio to the bare stream are shown, never judged.
    assert verdicts["load 200x25: p99_ms"] == "info"
    assert [r.name for r in compare.regressed(compare.compare(recorded, worse))] == [
        "load 200x25: p99_ratio",
        "load 200x25: delivered_fraction",
    ]
    assert compare.regressed(compare.compare(recorded, recorded)) == []
    assert {r.name: r.verdict for r in compare.compare(recorded, better)}["load 200x25: p99_ratio"] == "better"
    assert compare.regressed(compare.compare(recorded, better)) == []


def test_comparison_judges_ratios_to_the_same_invocations_bare_stream() -> None:
    recorded = compare.figures({"load": [_load_result(p99_ms=50.0, delivered=5000.0)]})
    # A slower machine: the server's p99 and the bare stream's both 4x: the ratio is unchanged.
    slower = compare.figures({"load": [_load_result(p99_ms=200.0, delivered=5000.0, bare_p99_ms=8.0)]})
    assert compare.regressed(compare.compare(recorded, slower)) == []
    # Within the margin (p99 ratio: 3x the recorded one) is noise; beyond it is not.
    assert compare.judge("load 200x25: p99_ratio", 10.0, 30.0).verdict == "same"
    assert compare.judge("load 200x25: p99_ratio", 10.0, 31.0).verdict == "REGRESSED"
    assert compare.judge("x: delivered_fraction", 1.0, 0.98).verdict == "same"
    assert compare.judge("x: delivered_fraction", 1.0, 0.96).verdict == "REGRESSED"
    # A recorded 0 missing tokens allows none.
    assert compare.judge("x: tokens_missing", 0.0, 1.0).verdict == "REGRESSED"
    assert compare.judge("x: events_per_s", 1000.0, 1500.0).verdict == "better"
    # Other sizes are other figures: never compared.
    quick = compare.figures({"load": [_load_result(p99_ms=1e6, delivered=1.0) | {"runs": 3, "rate": 50.0}]})
    assert compare.compare(recorded, quick) == []


def test_the_record_names_when_and_where_each_scenario_was_measured() -> None:
    recorded = compare.read_recorded()
    figures = compare.figures(recorded["results"])
    assert figures["load 200x25: delivered_fraction"] == pytest.approx(5037 / 5000)
    assert figures["replicas 200x25 sqlite: p99_ms"] == 900
    for scenario, result in recorded["results"].items():
        for key in compare._keyed(scenario, result):
            assert {"date", "commit", "command", "machine"} <= set(recorded["measured"][key]), key
    assert "README" in recorded["about"]


def test_record_replaces_what_was_measured_and_keeps_the_rest() -> None:
    old = {
        "about": "seeded",
        "measured": {"load 200x25": {"date": "old"}, "load 200x10": {"date": "old"}, "watchers": {"date": "old"}},
        "results": {
            "load": [_load_result(50.0, 5000.0), _load_result(10.0, 2000.0) | {"rate": 10.0}],
            "watchers": {"watchers": 1000, "kib_per_watcher": 30.0},
        },
    }
    out = {
        "date": "new",
        "command": "python -m bench --only load",
        "machine": {"cores": 2},
        "results": {"load": [_load_result(60.0, 4990.0)]},
    }
    new = compare.record(old, out, "abc1234")
    assert new["about"] == "seeded"
    assert new["measured"]["load 200x25"] == {
        "date": "new", "commit": "abc1234", "command": "python -m bench --only load", "machine": {"cores": 2}
    }  # fmt: skip
    assert new["measured"]["load 200x10"] == {"date": "old"}
    assert new["measured"]["watchers"] == {"date": "old"}
    assert [(r["rate"], r["server"]["p99_ms"]) for r in new["results"]["load"]] == [(25.0, 60.0), (10.0, 10.0)]
    assert "passes" not in new["results"]["load"][0]


def test_check_exits_non_zero_on_a_regression(tmp_path: Path) -> None:
    record = tmp_path / "recorded.json"
    record.write_text(json.dumps({"measured": {}, "results": {"load": [_load_result(50.0, 5000.0)]}}))
    now = {"date": "d", "command": "c", "machine": {}, "results": {"load": [_load_result(12_800.0, 3494.0)]}}
    same = {**now, "results": {"load": [_load_result(50.0, 5000.0)]}}
    for name, results in (("regressed", now), ("same", same)):
        (tmp_path / f"{name}.json").write_text(json.dumps(results))

    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "bench", "--against", str(record), *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    failed = bench("--compare", str(tmp_path / "regressed.json"), "--check")
    assert failed.returncode == 1, failed.stderr
    assert "REGRESSED: 2 figure(s) worse than recorded beyond their margin" in failed.stdout
    assert "| load 200x25: p99_ratio | 25 | 6,400 | 200% | REGRESSED |" in failed.stdout
    # Without --check the comparison is said, and the exit code is left alone.
    assert bench("--compare", str(tmp_path / "regressed.json")).returncode == 0
    passed = bench("--compare", str(tmp_path / "same.json"), "--check")
    assert passed.returncode == 0, passed.stdout
    assert "No figure is worse than recorded beyond its margin." in passed.stdout


def test_a_patched_server_is_facilitair_serve_with_the_patch(tmp_path: Path) -> None:
    # Every scenario's server is `facilitair serve`; with --try, bench.server applies the patch and then runs it.
    from bench.cluster import environment, start  # noqa: PLC0415 - the harness's, only for this test

    async def serve_once() -> tuple[list[str], list[dict[str, object]]]:
        store = {"FACILITAIR_DB": str(tmp_path / "db.sqlite3")}
        env = environment("http://127.0.0.1:9/v1", "patched", store, FACILITAIR_LOG_LEVEL="info")
        served = await start(env, tmp_path, tries=("asyncio",))
        try:
            cmdline = Path(f"/proc/{served.pid}/cmdline")
            command = (await asyncio.to_thread(cmdline.read_text, encoding="utf-8")).split("\0")
        finally:
            await served.stop()
        lines = served.log.read_text(encoding="utf-8").splitlines()
        return command, [json.loads(line) for line in lines if line.startswith("{")]

    command, log = asyncio.run(serve_once())
    assert command[1:5] == ["-m", "bench.server", "--try", "asyncio"]
    [serving] = [line for line in log if line["event"] == "serving"]
    assert serving["event_loop"] == "asyncio"  # the patch; uvloop otherwise
    assert serving["store"] == "sqlite"
