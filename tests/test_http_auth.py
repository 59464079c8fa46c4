"""The HTTP gateway's authentication: Bearer keys, the login's session cookie, CSRF, and ownership.

The same keys and principals as gRPC; another principal's run is answered exactly like one that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest

from facilitair.server.gateway.auth import CSRF_HEADER, SESSION_COOKIE, SESSION_SECONDS
from tests.fakes.providers import FakeOpenAI
from tests.harness.http import events_of
from tests.harness.logs import captured_logs
from tests.harness.servers import Harness, ServerFactory
from tests.harness.team import TASK, Team

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef-bob"
KEYS = f"alice:{ALICE},bob:{BOB}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(Team()) as made:
        yield made


@pytest.fixture
async def server(make_server: ServerFactory, fake: FakeOpenAI) -> Harness:
    return await make_server(openai=fake, api_keys=KEYS, thinking_interval=60, heartbeat_interval=60)


def base(h: Harness) -> str:
    return f"http://127.0.0.1:{h.server.http_port}"


def browser(h: Harness, cookies: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """A session that keeps cookies as a browser does (aiohttp's default jar ignores an IP address's)."""
    return aiohttp.ClientSession(base(h), cookie_jar=aiohttp.CookieJar(unsafe=True), cookies=cookies)


async def test_calls_without_a_valid_key_are_401_and_another_principals_run_is_404(server: Harness) -> None:
    async with aiohttp.ClientSession(base(server)) as http:
        for headers in ({}, bearer("wrong-key-0123456789abcdef"), {"Authorization": "Basic abc"}):
            async with http.get("/v1/runs", headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await response.json())["reason"] == "UNAUTHENTICATED"
        async with http.post("/v1/runs", json={"task": TASK}, headers=bearer(ALICE)) as response:
            assert response.status == 201
            run_id = (await response.json())["run"]["runId"]
        async with http.get(f"/v1/runs/{run_id}/events", headers=bearer(ALICE)) as response:
            events = await events_of(response)
        assert events[-1].WhichOneof("payload") == "run_completed"
        for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/events", f"/v1/runs/{run_id}/files", "/v1/runs/last"):
            async with http.get(path, headers=bearer(BOB)) as response:
                assert response.status == 404, path
                assert (await response.json())["reason"] == "RUN_NOT_FOUND"
        async with http.post(f"/v1/runs/{run_id}:cancel", headers=bearer(BOB)) as response:
            assert response.status == 404
        async with http.get("/v1/runs", headers=bearer(BOB)) as response:
            assert await response.json() == {}


async def test_login_sets_an_httponly_strict_cookie_and_state_changes_need_the_csrf_header(
    server: Harness, make_server: ServerFactory, fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with browser(server) as http:
        async with http.post("/v1/login", json={"key": "not-a-key-0123456789"}) as response:
            assert response.status == 401
            assert SESSION_COOKIE not in response.cookies
        async with http.post("/v1/login", json={"key": ALICE}) as response:
            assert response.status == 200
            login = await response.json()
            set_cookie = response.headers["Set-Cookie"]
        assert login["principal"] == "alice"
        assert login["csrfHeader"] == CSRF_HEADER
        morsel = SimpleCookie(set_cookie)[SESSION_COOKIE]
        assert morsel["httponly"]
        assert morsel["samesite"] == "Strict"
        assert morsel["path"] == "/"
        assert morsel["max-age"] == str(SESSION_SECONDS)
        assert not morsel["secure"]  # no TLS here: a Secure cookie would never be sent back
        assert ALICE not in set_cookie
        async with http.get("/v1/runs") as response:  # the cookie alone reads
            assert response.status == 200
        async with http.get("/v1/session") as response:
            assert (await response.json())["csrfToken"] == login["csrfToken"]
        async with http.post("/v1/runs", json={"task": TASK}) as response:
            assert response.status == 403
            assert (await response.json())["reason"] == "CSRF_REFUSED"
        async with http.post("/v1/runs", json={"task": TASK}, headers={CSRF_HEADER: "forged"}) as response:
            assert response.status == 403
        async with http.post("/v1/runs", json={"task": TASK}, headers={CSRF_HEADER: login["csrfToken"]}) as response:
            assert response.status == 201
        cookie = morsel.value
    # Another replica with the same keys accepts the cookie (a server of its own on another file here).
    other = await make_server(openai=fake, api_keys=KEYS, db=tmp_path / "other.db")
    async with browser(other, {SESSION_COOKIE: cookie}) as http, http.get("/v1/session") as response:
        assert (await response.json())["principal"] == "alice"
    tampered = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    async with browser(server, {SESSION_COOKIE: tampered}) as http:
        async with http.get("/v1/runs") as response:
            assert response.status == 401
        async with http.post("/v1/logout") as response:
            assert response.status == 204


async def test_query_strings_and_keys_never_reach_the_log(server: Harness) -> None:
    secret = "QUERY-SECRET-0123456789"
    with captured_logs() as logs:
        async with aiohttp.ClientSession(base(server)) as http:
            async with http.get(f"/v1/runs?pageToken={secret}", headers=bearer(ALICE)) as response:
                assert response.status == 400
            async with http.post("/v1/login", json={"key": ALICE}) as response:
                assert response.status == 200
    text = repr(logs.entries)
    assert logs.of("http_request")
    assert secret not in text
    assert ALICE not in text


async def test_a_rate_limited_call_is_429_with_its_retry_delay(make_server: ServerFactory, fake: FakeOpenAI) -> None:
    h = await make_server(openai=fake, runs_per_minute=1, thinking_interval=60, heartbeat_interval=60)
    async with aiohttp.ClientSession(base(h)) as http:
        async with http.post("/v1/runs", json={"task": TASK}) as response:
            assert response.status == 201
        async with http.post("/v1/runs", json={"task": TASK}) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            error = await response.json()
    assert error["reason"] == "RATE_LIMITED"
    [retry] = [d for d in error["details"] if d["@type"].endswith("RetryInfo")]
    assert retry["retryDelay"].endswith("s")
