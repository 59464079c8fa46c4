"""The HTTP gateway without a browser: an HTTP client against a real server, reading JSON and the SSE stream.

The event stream is checked against WatchRun on the same run: the same events, byte for byte once decoded,
from every resume point; 204 at the end; the same coalescing rule. The JSON endpoints answer with the same
messages and the same error table as gRPC.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import REGISTRY

from facilitair.server.gateway import bodies, sse
from facilitair.v1 import orchestrator_pb2 as pb
from tests.harness.events import covered, kind, read_until
from tests.harness.http import events_of, messages
from tests.harness.logs import captured_logs
from tests.harness.servers import Env, serving
from tests.harness.stores import Target
from tests.harness.team import EVENTS_PER_RUN, at_hold, collaborate_request, expected_texts, stage_texts

pytestmark = pytest.mark.both_stores


@pytest.fixture
async def env(store_target: Target) -> AsyncIterator[Env]:
    async with serving(store_target) as made:
        yield made


@pytest.fixture
async def http(env: Env) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{env.server.http_port}") as session:
        yield session


async def finished_run(env: Env) -> tuple[str, list[pb.RunEvent]]:
    events = await env.run_to_end()
    return events[0].run_id, events


async def test_the_stream_resumes_from_every_seq_with_nothing_lost_or_repeated(
    env: Env, http: aiohttp.ClientSession
) -> None:
    run_id, stored = await finished_run(env)
    assert len(stored) == EVENTS_PER_RUN
    for k in range(len(stored)):
        async with http.get(f"/v1/runs/{run_id}/events", params={"after_seq": str(k)}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["X-Accel-Buffering"] == "no"
            received = [m async for m in messages(response)]
        assert received[0].retry == sse.RETRY_MS
        assert not received[0].data
        events = [m.run_event() for m in received[1:]]
        assert events == stored[k:]  # the same RunEvents as WatchRun, from k + 1 on
        assert [m.id for m in received[1:]] == [str(e.seq) for e in stored[k:]]
        assert [m.event for m in received[1:]] == [kind(e) for e in stored[k:]]


async def test_last_event_id_resumes_and_the_later_of_the_two_wins(env: Env, http: aiohttp.ClientSession) -> None:
    run_id, stored = await finished_run(env)
    for after, last_id in ((3, 10), (10, 3), (0, 7)):
        headers = {"Last-Event-ID": str(last_id)}
        url = f"/v1/runs/{run_id}/events?after_seq={after}"
        async with http.get(url, headers=headers) as response:
            assert await events_of(response) == stored[max(after, last_id) :]


async def test_a_reconnect_at_the_end_of_a_finished_run_gets_204(env: Env, http: aiohttp.ClientSession) -> None:
    run_id, stored = await finished_run(env)
    async with http.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(stored[-1].seq)}) as response:
        assert response.status == 204
        assert await response.read() == b""
    async with http.get(f"/v1/runs/{run_id}/events?after_seq={stored[-1].seq + 5}") as response:
        assert response.status == 204


async def test_coalesced_stream_tiles_the_seqs_and_keeps_the_text(env: Env, http: aiohttp.ClientSession) -> None:
    run_id, stored = await finished_run(env)
    for k in (0, 4, 13):
        async with http.get(f"/v1/runs/{run_id}/events?after_seq={k}&coalesce=1") as response:
            joined = await events_of(response)
        assert covered(joined) == [e.seq for e in stored[k:]]
        assert len(joined) < len(stored) - k
        if k == 0:
            assert stage_texts(joined) == expected_texts()


async def test_a_live_run_streams_as_it_happens_and_the_stream_ends_after_its_end(
    env: Env, http: aiohttp.ClientSession
) -> None:
    release = env.team.hold_next("Coder")
    call = env.stub.Collaborate(collaborate_request())
    before = await read_until(call, at_hold)
    run_id = before[0].run_id
    async with http.get(f"/v1/runs/{run_id[:8]}/events") as response:
        stream = messages(response)
        assert (await anext(stream)).retry == sse.RETRY_MS
        live = [(await anext(stream)).run_event() for _ in before]
        assert live == before  # everything so far, while the coder's reply is held
        release.set()
        rest = [m.run_event() async for m in stream]
    assert kind(rest[-1]) == "run_completed"
    assert [e.seq for e in live + rest] == list(range(1, EVENTS_PER_RUN + 1))
    call.cancel()


async def test_a_client_that_goes_away_releases_its_watcher_at_once(env: Env, http: aiohttp.ClientSession) -> None:
    release = env.team.hold_next("Coder")
    call = env.stub.Collaborate(collaborate_request())
    before = await read_until(call, at_hold)
    watchers = REGISTRY.get_sample_value("facilitair_watchers_active")
    assert watchers is not None
    with captured_logs() as logs:
        response = await http.get(f"/v1/runs/{before[0].run_id}/events")
        stream = messages(response)
        assert (await anext(stream)).retry == sse.RETRY_MS
        assert (await anext(stream)).id == "1"  # attached: it waits for the held run's next event
        assert REGISTRY.get_sample_value("facilitair_watchers_active") == watchers + 1
        response.close()  # the connection goes; nothing more is written to it
        await logs.until("stream_closed", complete=False)  # released without waiting for a write
    assert REGISTRY.get_sample_value("facilitair_watchers_active") == watchers
    release.set()
    call.cancel()


async def test_a_silent_stream_gets_a_comment_line(
    env: Env, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)
    release = env.team.hold_next("Coder")
    call = env.stub.Collaborate(collaborate_request())
    before = await read_until(call, at_hold)
    async with http.get(f"/v1/runs/{before[0].run_id}/events?after_seq={before[-1].seq}") as response:
        stream = messages(response)
        assert (await anext(stream)).retry == sse.RETRY_MS
        assert (await anext(stream)).comment == "keepalive"  # nothing else can come: the run is held
        release.set()
        rest = [m async for m in stream if m.data]
    assert rest[0].id == str(before[-1].seq + 1)
    call.cancel()


async def test_unknown_runs_and_bad_positions_are_refused_with_their_reasons(
    env: Env, http: aiohttp.ClientSession
) -> None:
    async with http.get("/v1/runs/00000000-0000-4000-8000-000000000000/events") as response:
        assert response.status == 404
        body = await response.json()
    assert body["reason"] == "RUN_NOT_FOUND"
    assert body["code"] == 5
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    release = env.team.hold_next("Coder")
    call = env.stub.Collaborate(collaborate_request())
    before = await read_until(call, at_hold)
    run_id = before[0].run_id
    async with http.get(f"/v1/runs/{run_id}/events?after_seq=999") as response:
        assert response.status == 400
        assert (await response.json())["reason"] == "SEQ_OUT_OF_RANGE"
    async with http.get(f"/v1/runs/{run_id}/events?after_seq=-1") as response:
        assert response.status == 400
        body = await response.json()
    assert body["details"][1]["fieldViolations"][0]["field"] == "after_seq"
    # Digits Python's str.isdigit takes but int() does not: a 400 naming the field, not a 500.
    for query, headers, field in (("?after_seq=²", {}, "after_seq"), ("", {"Last-Event-ID": "³"}, "Last-Event-ID")):
        async with http.get(f"/v1/runs/{run_id}/events{query}", headers=headers) as response:
            assert response.status == 400, query or headers
            body = await response.json()
        assert body["details"][1]["fieldViolations"][0]["field"] == field
    release.set()
    call.cancel()


async def test_runs_are_created_listed_read_and_cancelled_over_json(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/runs", json={"task": "Write a function that reverses a string"}) as response:
        assert response.status == 201
        created = (await response.json())["run"]
    run_id = created["runId"]
    assert response.headers["Location"] == f"/v1/runs/{run_id}"
    async with http.get(f"/v1/runs/{run_id}/events") as response:
        events = await events_of(response)
    assert kind(events[-1]) == "run_completed"
    async with http.get("/v1/runs/last") as response:
        run = (await response.json())["run"]
    assert run["runId"] == run_id
    assert run["state"] == "RUN_STATE_COMPLETED"
    assert run["lastSeq"] == str(events[-1].seq)  # int64 as a string: protobuf's canonical JSON
    async with http.post(f"/v1/runs/{run_id[:6]}:cancel") as response:
        assert response.status == 200
        assert (await response.json())["run"]["state"] == "RUN_STATE_COMPLETED"  # finished: returned as it is
    async with http.get(f"/v1/runs/{run_id}/files") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    files = {a.path: a.content for a in of_result(events)}
    assert {name: archive.read(name).decode() for name in archive.namelist()} == files


def of_result(events: list[pb.RunEvent]) -> list[pb.Artifact]:
    return list(events[-1].run_completed.result.artifacts)


async def test_the_list_pages_like_list_runs(env: Env, http: aiohttp.ClientSession) -> None:
    made = [(await finished_run(env))[0] for _ in range(3)]
    seen: list[str] = []
    token = ""
    for _ in range(3):
        async with http.get("/v1/runs", params={"pageSize": "2", "pageToken": token}) as response:
            assert response.status == 200
            page = await response.json()
        seen += [r["runId"] for r in page.get("runs", [])]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == made[::-1]  # newest first, each once
    async with http.get("/v1/runs?state=RUN_STATE_FAILED") as response:
        assert await response.json() == {}
    async with http.get("/v1/runs?pageSize=500") as response:
        assert response.status == 400
        assert (await response.json())["details"][1]["fieldViolations"][0]["field"] == "page_size"
    async with http.get("/v1/runs?colour=blue") as response:
        assert response.status == 400
        assert (await response.json())["details"][1]["fieldViolations"][0]["field"] == "colour"


@pytest.mark.sqlite_only  # request parsing: no store is reached
async def test_bad_bodies_are_400_naming_the_field(env: Env, http: aiohttp.ClientSession) -> None:
    cases = [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"task": ""}', "task"),
        (b'{"task": "x", "maxRefinements": "many"}', "maxRefinements"),
        (b'{"task": "x", "favourite": 1}', "favourite"),
        (b'{"task": "a\\u0000b"}', "task"),
        (b"\xff\xfe", "body"),
        (b'{"task": "' + b"x" * (2 * 1024 * 1024) + b'"}', "body"),
    ]
    for body, field in cases:
        sent = io.BytesIO(body)  # aiohttp warns about a large body given as bytes
        async with http.post("/v1/runs", data=sent, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, body[:40]
            error = await response.json()
        assert error["reason"] == "INVALID_ARGUMENT"
        violations = error["details"][1]["fieldViolations"]
        assert violations[0]["field"] == field, (body[:40], violations)
    async with http.get("/v1/nothing-here") as response:
        assert response.status == 404
        error = await response.json()
    # An unknown path is not a missing run: its reason says so, with the plain NOT_FOUND code.
    assert (error["code"], error["reason"]) == (5, "PATH_NOT_FOUND")
    assert error["message"] == "no such path: /v1/nothing-here"


@pytest.mark.sqlite_only  # no store involved
async def test_info_names_the_gateway_and_pages_carry_the_security_headers(
    env: Env, http: aiohttp.ClientSession
) -> None:
    async with http.get("/v1/info") as response:
        info = await response.json()
    assert info["httpUrl"] == f"http://127.0.0.1:{env.server.http_port}"
    assert (await env.client.server_info()).http_url == info["httpUrl"]
    for path in ("/", "/runs/last"):
        async with http.get(path) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy
            assert "unsafe-inline" not in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.sqlite_only  # no store involved
async def test_a_local_server_refuses_other_sites(env: Env, http: aiohttp.ClientSession) -> None:
    task = {"task": "Write a function that reverses a string"}
    for path in ("/v1/runs", "/v1/login", "/v1/runs/last:cancel"):
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            async with http.post(path, json=task, headers=headers) as response:
                assert response.status == 403
                assert (await response.json())["reason"] == "CSRF_REFUSED"
    same_site = {"Origin": f"http://127.0.0.1:{env.server.http_port}", "Sec-Fetch-Site": "same-origin"}
    async with http.post("/v1/runs", json=task, headers=same_site) as response:
        assert response.status == 201  # the page itself
    # DNS rebinding: a name that is not this machine's, even one that starts like a loopback address
    for host in ("evil.example:80", "127.evil.example", "127.0.0.1.nip.io", "localhost.evil.example"):
        async with http.get("/v1/runs", headers={"Host": host}) as response:
            assert response.status == 403, host
            assert (await response.json())["reason"] == "CSRF_REFUSED"
    for host in ("localhost", "127.0.0.2:80", "[::1]"):
        async with http.get("/v1/runs", headers={"Host": host}) as response:
            assert response.status == 200, host


@pytest.mark.sqlite_only  # request parsing: no store is reached
async def test_a_body_that_never_arrives_is_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "BODY_SECONDS", 0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.http_port)
    writer.write(b"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"task\": ")
    await writer.drain()
    answer = await reader.read(4096)  # the rest of the body is never sent
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"field":"body"' in answer
    assert b"did not arrive" in answer


async def test_a_live_run_has_no_files_yet_and_a_cancelled_one_has_those_it_stored(
    env: Env, http: aiohttp.ClientSession
) -> None:
    env.team.hold_next("Coder")
    call = env.stub.Collaborate(collaborate_request())
    before = await read_until(call, at_hold)
    run_id = before[0].run_id
    async with http.get(f"/v1/runs/{run_id}/files") as response:
        assert response.status == 400
        assert (await response.json())["reason"] == "FAILED_PRECONDITION"
    async with http.post(f"/v1/runs/{run_id}:cancel") as response:
        assert response.status == 200
        assert (await response.json())["run"]["state"] == "RUN_STATE_CANCELLED"
    async with http.get(f"/v1/runs/{run_id}/files") as response:
        assert response.status == 200
        archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    stored = [e.artifact_produced.artifact for e in before if kind(e) == "artifact_produced"]
    assert stored  # the architect's design, before the coder was held
    assert {name: archive.read(name).decode() for name in archive.namelist()} == {a.path: a.content for a in stored}
    call.cancel()
