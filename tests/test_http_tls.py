"""The HTTP gateway under the gRPC server's TLS files and exposure rule: HTTPS, a Secure cookie, client certificates
naming the same principals as over gRPC, and no open address without authentication."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from facilitair.client import Client
from facilitair.server.gateway.auth import SESSION_COOKIE
from facilitair.server.settings import ConfigError
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import collect
from tests.harness.pki import Pki
from tests.harness.servers import ServerFactory
from tests.harness.team import TASK, Team

KEY = "alice-key-0123456789abcdef"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(Team()) as made:
        yield made


def trusting(pki: Pki, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """An SSL context trusting the test CA, presenting `cert` when given."""
    context = ssl.create_default_context(cadata=pki.root.decode())
    if cert is not None:
        cert.configure_cert(context)
    return context


async def test_under_tls_the_gateway_is_https_and_the_cookie_is_secure(
    make_server: ServerFactory, fake: FakeOpenAI, tmp_path: Path
) -> None:
    pki = Pki.make(tmp_path)
    h = await make_server(openai=fake, api_keys=f"alice:{KEY}", tls_cert=pki.server_cert, tls_key=pki.server_key)
    url = f"https://127.0.0.1:{h.server.http_port}"
    assert h.server.http_url == url
    connector = aiohttp.TCPConnector(ssl=trusting(pki))
    async with aiohttp.ClientSession(url, connector=connector) as http:
        async with http.post("/v1/login", json={"key": KEY}) as response:
            assert response.status == 200
            assert response.cookies[SESSION_COOKIE]["secure"]
        async with http.get("/v1/info", headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert (await response.json())["httpUrl"] == url
    async with aiohttp.ClientSession(f"http://127.0.0.1:{h.server.http_port}") as plain:
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port: no answer to read
            await plain.get("/v1/info")


async def test_client_certificates_name_the_same_principals_as_over_grpc(
    make_server: ServerFactory, fake: FakeOpenAI, tmp_path: Path
) -> None:
    pki = Pki.make(tmp_path)
    h = await make_server(openai=fake, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca_cert)
    # trustme names its certificates by a random subject: the same certificate goes to both transports.
    alice, bob = pki.ca.issue_cert("alice"), pki.ca.issue_cert("bob")
    grpc_client = Client(
        h.target,
        root_certificates=pki.root,
        private_key=alice.private_key_pem.bytes(),
        certificate_chain=alice.cert_chain_pems[0].bytes(),
    )
    async with grpc_client:
        events = await collect(grpc_client.collaborate(TASK))
    run_id = events[0].run_id
    url = f"https://127.0.0.1:{h.server.http_port}"
    for cert, sees in ((alice, [run_id]), (bob, [])):
        connector = aiohttp.TCPConnector(ssl=trusting(pki, cert))
        async with aiohttp.ClientSession(url, connector=connector) as http, http.get("/v1/runs") as response:
            assert response.status == 200
            assert [r["runId"] for r in (await response.json()).get("runs", [])] == sees
    connector = aiohttp.TCPConnector(ssl=trusting(pki))  # no client certificate: the handshake is refused
    async with aiohttp.ClientSession(url, connector=connector) as http:
        with pytest.raises(aiohttp.ClientError):
            await http.get("/v1/runs")


async def test_an_open_http_address_needs_authentication(make_server: ServerFactory, fake: FakeOpenAI) -> None:
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0:0"):
        await make_server(openai=fake, http_listen="0.0.0.0:0")
    h = await make_server(openai=fake, http_listen="off")
    assert h.server.http is None
    assert (await h.client.server_info()).http_url == ""
