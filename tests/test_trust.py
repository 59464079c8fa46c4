"""Trust: who may call, whose runs they see, secure defaults, TLS and mTLS, limits, sizes, slow watchers.

Every test runs a real server against a fake OpenAI behind the official SDK. Refusals are checked for
their status code, their message and their details (BadRequest, RetryInfo), and for what they must
not have done: no run created, no provider request sent, no other principal's run touched. Timeouts
are hang guards only; ordering comes from held replies that the test releases.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from cryptography import x509
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from facilitair.client import Client, FacilitairError, RunEvent, StatusCode
from facilitair.server.runs.queries import MAX_PAGE_TOKEN_CHARS
from facilitair.server.settings import ConfigError
from facilitair.server.transport.app import SERVICE_NAME
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.cli import cli, cli_environment
from tests.harness.events import EVENT_TIMEOUT, RUN_TIMEOUT, RunStream, collect, kind, refusal
from tests.harness.pki import Pki
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import Harness, ServerFactory
from tests.harness.stores import owners

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
ALICE_KEY = "alice-key-4c1d9e07b2a8f356"
BOB_KEY = "bob-key-81f0a3c6e95d2b47"
KEYS = f"alice:{ALICE_KEY},bob:{BOB_KEY}"

Metadata = tuple[tuple[str, str], ...]

# Every test that starts a server runs on a SQLite file and on a PostgreSQL database.
pytestmark = pytest.mark.both_stores


def bearer(key: str) -> Metadata:
    """Call metadata carrying an API key the way clients must send it."""
    return (("authorization", f"Bearer {key}"),)


# Credentials that must all be refused: none, wrong, malformed, or the right key in the wrong place.
BAD_CREDENTIALS: dict[str, Metadata] = {
    "none": (),
    "unknown key": bearer("not-a-configured-key-0000"),
    "empty bearer": (("authorization", "Bearer"),),
    "other scheme": (("authorization", f"Basic {ALICE_KEY}"),),
    "no scheme": (("authorization", ALICE_KEY),),
    "key minus last char": bearer(ALICE_KEY[:-1]),
    "key plus a char": bearer(ALICE_KEY + "0"),
    "two keys glued": bearer(ALICE_KEY + BOB_KEY),
    "other header": (("x-api-key", ALICE_KEY),),
}


async def failure(call: Awaitable[Any] | AsyncIterable[Any]) -> grpc.aio.AioRpcError:
    """The error a raw call ends with (a stream is read to its end); fails the test if the call succeeds."""
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            if isinstance(call, AsyncIterable):
                async for _ in call:
                    pass
            else:
                await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded")


def rpcs(stub: pb_grpc.OrchestratorServiceAsyncStub, run_id: str, md: Metadata) -> dict[str, Callable[[], Any]]:
    """Each RPC of the service, as a call to start with the given metadata."""
    return {
        "Collaborate": lambda: stub.Collaborate(pb.CollaborateRequest(task=TASK), metadata=md),
        "WatchRun": lambda: stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=md),
        "GetRun": lambda: stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=md),
        "ListRuns": lambda: stub.ListRuns(pb.ListRunsRequest(), metadata=md),
        "CancelRun": lambda: stub.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=md),
    }


async def keyed(make_server: ServerFactory, fake: FakeOpenAI, **settings: Any) -> Harness:
    """A server with alice's and bob's keys, every agent on the fake's model."""
    return await make_server(openai=fake, model=MINI, api_keys=KEYS, **settings)


def retry_delay(err: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of a raw error, in seconds; fails the test if there is none."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds() / 1e9)
    raise AssertionError(f"no RetryInfo among {[d.type_url for d in status.details]}")


def completed(events: Sequence[RunEvent]) -> bool:
    """Whether a run's events end with run_completed."""
    return bool(events) and kind(events[-1]) == "run_completed"


# ----- authentication ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS.values()), ids=list(BAD_CREDENTIALS))
async def test_bad_credentials_are_refused_on_every_rpc_and_create_nothing(
    make_server: ServerFactory, credentials: Metadata
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await keyed(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            for name, start in rpcs(stub, str(uuid.uuid4()), credentials).items():
                err = await failure(start())
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, name
                assert "authorization: Bearer <key>" in (err.details() or ""), name
                assert ALICE_KEY[:8] not in (err.details() or ""), name
            # With a good key: nothing was created, and the provider was never asked anything.
            assert list((await stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(ALICE_KEY))).runs) == []
            assert list((await stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(BOB_KEY))).runs) == []
    assert fake.requests == []
    assert await owners(h.store) == {}


async def test_bad_credentials_cannot_reach_an_existing_run(make_server: ServerFactory) -> None:
    architect, release = held(default_replies()["architect"], after=0)
    async with FakeOpenAI(scripted(architect=architect)) as fake:
        h = await keyed(make_server, fake)
        async with Client(h.target, api_key=ALICE_KEY) as alice, RunStream(alice.collaborate(TASK)) as run:
            try:
                run_id = (await run.until(lambda e: kind(e) == "run_started")).run_id
                async with grpc.aio.insecure_channel(h.target) as channel:
                    stub = pb_grpc.OrchestratorServiceStub(channel)
                    for label in ("none", "unknown key", "key plus a char"):
                        calls = rpcs(stub, run_id, BAD_CREDENTIALS[label])
                        for name in ("WatchRun", "GetRun", "CancelRun"):
                            err = await failure(calls[name]())
                            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (label, name)
                assert (await alice.get_run(run_id)).state == pb.RUN_STATE_RUNNING  # the cancels did nothing
            finally:
                release.set()
            events = await run.to_end()
    assert completed(events)


async def test_health_needs_no_key(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await keyed(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=EVENT_TIMEOUT)
                assert response.status == health_pb2.HealthCheckResponse.SERVING


async def list_services(channel: grpc.aio.Channel) -> list[str]:
    """The services a server lists through reflection (v1alpha, as grpcurl and buf curl use)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names: list[str] = []
    async with asyncio.timeout(EVENT_TIMEOUT):
        async for response in call:
            names += [s.name for s in response.list_services_response.service]
    return names


async def drain(call: AsyncIterable[object]) -> None:
    """Read a stream to its end (or its error)."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        async for _ in call:
            pass


async def test_reflection_needs_no_key_when_on(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await keyed(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            services = await list_services(channel)
    assert sorted(services) == sorted(
        [SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
    )


async def test_reflection_is_absent_when_off(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await keyed(make_server, fake, reflection=False)
        async with grpc.aio.insecure_channel(h.target) as channel:
            # No request message: the server refuses the method as soon as the call arrives, and a
            # request still being written then fails on the client as INTERNAL instead (seen in CI).
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter(()))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await drain(call)
            # The server still serves: reflection is missing, not broken.
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, (err.value.code(), err.value.details())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def both_can_run(h: Harness) -> None:
    """alice and bob each complete a run with their keys; a keyless client is refused."""
    async with Client(h.target, api_key=ALICE_KEY) as alice, Client(h.target, api_key=BOB_KEY) as bob:
        assert completed(await collect(alice.collaborate(TASK)))
        assert completed(await collect(bob.collaborate(TASK)))
        assert len((await alice.list_runs())[0]) == 1
        assert len((await bob.list_runs())[0]) == 1
    err = await refusal(h.client.collaborate(TASK))
    assert err.code == StatusCode.UNAUTHENTICATED
    assert sorted((await owners(h.store)).values()) == ["alice", "bob"]


async def test_keys_from_the_environment(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACILITAIR_API_KEYS", f" alice:{ALICE_KEY} ,, bob:{BOB_KEY}")
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, model=MINI)
        await both_can_run(h)


async def test_keys_from_a_file_with_comments_and_blank_lines(make_server: ServerFactory, tmp_path: Path) -> None:
    carol_key = "carol-key-commented-out-0001"
    keys = tmp_path / "keys.txt"
    keys.write_text(
        f"# facilitair keys, one name:key a line\n\n  alice:{ALICE_KEY}  \n# carol:{carol_key}\n\t\nbob:{BOB_KEY}\n",
        encoding="utf-8",
    )
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, model=MINI, api_keys_file=keys)
        await both_can_run(h)
        async with Client(h.target, api_key=carol_key) as carol:
            err = await refusal(carol.collaborate(TASK))
    assert err.code == StatusCode.UNAUTHENTICATED


def assert_no_piece_of(secret: str, text: str) -> None:
    """No 8-character piece of `secret` appears in `text`."""
    for i in range(len(secret) - 7):
        assert secret[i : i + 8] not in text, f"{secret[i : i + 8]!r} of a key leaked into {text!r}"


@pytest.mark.parametrize(
    ("line", "secret", "says"),
    [
        ("carol-no-colon-a8d0f3b2c61e97", "a8d0f3b2c61e97", "not name:key"),
        ("dave:short-sec7", "short-sec7", "at least 16 characters"),
        (":nameless-key-5e2c9a0b7d14f6", "nameless-key-5e2c9a0b7d14f6", "not name:key"),
        ("alice:second-alice-key-3f9b2d71", "second-alice-key-3f9b2d71", "repeats the principal name 'alice'"),
    ],
    ids=["no-colon", "short-key", "no-name", "duplicate-name"],
)
async def test_a_bad_keys_file_line_is_named_without_its_key(
    make_server: ServerFactory, tmp_path: Path, line: str, secret: str, says: str
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# keys\n\nalice:{ALICE_KEY}\n{line}\nbob:{BOB_KEY}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        await make_server(api_keys_file=keys)
    message = str(err.value)
    assert f"{keys} line 4" in message
    assert says in message
    assert_no_piece_of(secret, message)
    assert_no_piece_of(ALICE_KEY, message)
    assert_no_piece_of(BOB_KEY, message)


async def test_a_bad_environment_key_is_reported_without_its_key(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACILITAIR_API_KEYS", f"alice:{ALICE_KEY},bob:tiny-bob-key")
    with pytest.raises(ConfigError) as err:
        await make_server()
    message = str(err.value)
    assert "FACILITAIR_API_KEYS" in message
    assert_no_piece_of("tiny-bob-key", message)
    assert_no_piece_of(ALICE_KEY, message)


# ----- ownership --------------------------------------------------------------------------------------------


def modulo_id(message: str, run_id: str) -> str:
    """A message with the run id it names replaced, so that messages about two ids can be compared."""
    assert run_id in message
    return message.replace(run_id, "<id>")


async def test_another_principal_cannot_see_touch_or_list_a_run(make_server: ServerFactory) -> None:
    architect, release = held(default_replies()["architect"], after=0)
    async with FakeOpenAI(scripted(architect=architect)) as fake:
        h = await keyed(make_server, fake)
        async with (
            Client(h.target, api_key=ALICE_KEY) as alice,
            Client(h.target, api_key=BOB_KEY) as bob,
            RunStream(alice.collaborate(TASK)) as run,
        ):
            try:
                run_id = (await run.until(lambda e: kind(e) == "run_started")).run_id
                missing = str(uuid.uuid4())

                async def bob_watches(rid: str) -> list[RunEvent]:
                    return await collect(bob.watch(rid))

                calls: dict[str, Callable[[str], Awaitable[object]]] = {
                    "watch": bob_watches,
                    "get": bob.get_run,
                    "cancel": bob.cancel_run,
                }

                async def bob_is_refused(live: bool) -> None:
                    for name, call in calls.items():
                        with pytest.raises(FacilitairError) as theirs:
                            await call(run_id)
                        with pytest.raises(FacilitairError) as nobodys:
                            await call(missing)
                        assert theirs.value.code == nobodys.value.code == StatusCode.NOT_FOUND, (name, live)
                        assert modulo_id(theirs.value.message, run_id) == modulo_id(nobodys.value.message, missing)
                        assert theirs.value.field_violations == nobodys.value.field_violations == []
                    assert (await bob.list_runs())[0] == []

                await bob_is_refused(live=True)
                live = await alice.get_run(run_id)
                assert live.state == pb.RUN_STATE_RUNNING  # bob's cancel did not cancel it
            finally:
                release.set()
            events = await run.to_end()
            assert completed(events)
            assert not any(kind(e) == "run_cancelled" for e in events)
            await bob_is_refused(live=False)  # a finished run is no more visible
            assert [r.run_id for r in (await alice.list_runs())[0]] == [run_id]
    assert await owners(h.store) == {run_id: "alice"}


# ----- secure by default ------------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "10.1.2.3:0"])
async def test_a_public_address_without_authentication_is_refused(make_server: ServerFactory, listen: str) -> None:
    with pytest.raises(ConfigError) as err:
        await make_server(listen=listen)
    assert "--insecure" in str(err.value)
    assert "FACILITAIR_API_KEYS" in str(err.value)


async def test_server_tls_alone_does_not_count_as_authentication(make_server: ServerFactory, tmp_path: Path) -> None:
    pki = Pki.make(tmp_path)
    with pytest.raises(ConfigError) as err:
        await make_server(listen="0.0.0.0:0", tls_cert=pki.server_cert, tls_key=pki.server_key)
    assert "--insecure" in str(err.value)


@pytest.mark.parametrize("how", ["insecure", "keys", "mtls", "loopback"])
async def test_a_public_address_starts_with_insecure_keys_or_mtls(
    make_server: ServerFactory, tmp_path: Path, how: str
) -> None:
    pki = Pki.make(tmp_path)
    table: dict[str, dict[str, Any]] = {
        "insecure": {"listen": "0.0.0.0:0", "insecure": True},
        "keys": {"listen": "0.0.0.0:0", "api_keys": KEYS},
        "mtls": {
            "listen": "0.0.0.0:0",
            "tls_cert": pki.server_cert,
            "tls_key": pki.server_key,
            "tls_client_ca": pki.ca_cert,
        },
        "loopback": {"listen": "localhost:0"},
    }
    options = table[how]
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, model=MINI, **options)
        assert h.server.port > 0
        if how == "insecure":
            assert completed(await h.run(TASK))


# ----- TLS and mutual TLS -----------------------------------------------------------------------------------


async def test_tls_serves_clients_that_trust_its_ca_only(make_server: ServerFactory, tmp_path: Path) -> None:
    pki = Pki.make(tmp_path)
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, model=MINI, tls_cert=pki.server_cert, tls_key=pki.server_key)
        port = h.server.port
        # By name (the certificate's DNS SAN), and by address with the name given as an override.
        for target, options in [
            (f"localhost:{port}", None),
            (f"127.0.0.1:{port}", [("grpc.ssl_target_name_override", "localhost")]),
        ]:
            async with pki.client(target, options=options) as client:
                assert completed(await collect(client.collaborate(TASK)))
        # A plaintext client and a client that trusts another CA get no connection.
        (tmp_path / "other").mkdir()
        stranger = Pki.make(tmp_path / "other")
        for client in (Client(h.target), stranger.client(f"localhost:{port}")):
            async with client:
                with pytest.raises(FacilitairError) as err:
                    await client.list_runs()
            assert err.value.code == StatusCode.UNAVAILABLE
    assert len(await owners(h.store)) == 2


async def test_mtls_requires_a_client_certificate_and_its_subject_owns_the_run(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    pki = Pki.make(tmp_path)
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(
            openai=fake,
            model=MINI,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            tls_client_ca=pki.ca_cert,
        )
        target = f"localhost:{h.server.port}"
        # No certificate, or one from a CA the server does not trust: no connection, no run.
        (tmp_path / "other").mkdir()
        stranger = Pki.make(tmp_path / "other")
        for client in (pki.client(target), stranger.client(target, "alice@example")):
            async with client:
                with pytest.raises(FacilitairError) as err:
                    await client.list_runs()
            assert err.value.code == StatusCode.UNAVAILABLE
        assert fake.requests == []

        alice_cert = pki.ca.issue_cert("alice@example")
        bob_cert = pki.ca.issue_cert("bob@example")

        def with_cert(cert: trustme.LeafCert) -> Client:
            return Client(
                target,
                root_certificates=pki.root,
                private_key=cert.private_key_pem.bytes(),
                certificate_chain=cert.cert_chain_pems[0].bytes(),
            )

        async with with_cert(alice_cert) as alice, with_cert(bob_cert) as bob:
            events = await collect(alice.collaborate(TASK))
            assert completed(events)
            run_id = events[0].run_id
            assert [r.run_id for r in (await alice.list_runs())[0]] == [run_id]
            with pytest.raises(FacilitairError) as err:
                await bob.get_run(run_id)
            assert err.value.code == StatusCode.NOT_FOUND
            assert (await bob.list_runs())[0] == []
    assert await owners(h.store) == {run_id: Pki.subject(alice_cert)}
    assert Pki.subject(alice_cert) != Pki.subject(bob_cert)


async def mtls_server(make_server: ServerFactory, pki: Pki, fake: FakeOpenAI) -> Harness:
    """A server that requires client certificates from `pki`'s CA, and no API key."""
    return await make_server(
        openai=fake, model=MINI, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca_cert
    )


ALICE_SPIFFE = "spiffe://example.org/ns/payments/sa/alice"
BOB_SPIFFE = "spiffe://example.org/ns/payments/sa/bob"


async def test_spiffe_certificates_with_empty_subjects_are_two_principals(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    pki = Pki.make(tmp_path)
    async with FakeOpenAI(scripted()) as fake:
        h = await mtls_server(make_server, pki, fake)
        target = f"localhost:{h.server.port}"
        alice_client = pki.nameless_client(target, [x509.UniformResourceIdentifier(ALICE_SPIFFE)])
        bob_client = pki.nameless_client(target, [x509.UniformResourceIdentifier(BOB_SPIFFE)])
        async with alice_client as alice, bob_client as bob:
            alice_events = await collect(alice.collaborate(TASK))
            assert completed(alice_events)
            alice_run = alice_events[0].run_id
            # bob sees nothing of alice's: not her run, not in his list, and his cancel cannot reach it.
            for call in (bob.get_run, bob.cancel_run):
                with pytest.raises(FacilitairError) as err:
                    await call(alice_run)
                assert err.value.code == StatusCode.NOT_FOUND
            assert (await bob.list_runs())[0] == []
            bob_events = await collect(bob.collaborate(TASK))
            assert completed(bob_events)
            assert [r.run_id for r in (await alice.list_runs())[0]] == [alice_run]
            assert [r.run_id for r in (await bob.list_runs())[0]] == [bob_events[0].run_id]
    assert await owners(h.store) == {alice_run: ALICE_SPIFFE, bob_events[0].run_id: BOB_SPIFFE}


@pytest.mark.parametrize(
    "sans",
    [
        [],
        [x509.UniformResourceIdentifier(ALICE_SPIFFE), x509.UniformResourceIdentifier(BOB_SPIFFE)],
        [x509.DNSName("payments.example.org")],
    ],
    ids=["no-san", "two-uris", "dns-name-only"],
)
async def test_a_client_certificate_that_names_nobody_is_refused(
    make_server: ServerFactory, tmp_path: Path, sans: list[x509.GeneralName]
) -> None:
    pki = Pki.make(tmp_path)
    async with FakeOpenAI(scripted()) as fake:
        h = await mtls_server(make_server, pki, fake)
        target = f"localhost:{h.server.port}"
        async with pki.nameless_client(target, sans) as nobody:
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "Collaborate": lambda: collect(nobody.collaborate(TASK)),
                "ListRuns": nobody.list_runs,
                "GetRun": lambda: nobody.get_run(str(uuid.uuid4())),
            }
            for name, call in calls.items():
                with pytest.raises(FacilitairError) as err:
                    await call()
                assert err.value.code == StatusCode.UNAUTHENTICATED, name
                assert "the client certificate names no identity" in err.value.message, name
        # The TLS connection itself is accepted: health, which needs no credentials, answers over it.
        chain, key = pki.nameless_cert(sans)
        credentials = grpc.ssl_channel_credentials(pki.root, key, chain)
        async with grpc.aio.secure_channel(target, credentials) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert fake.requests == []
    assert await owners(h.store) == {}


# ----- limits -----------------------------------------------------------------------------------------------


async def test_concurrent_runs_per_principal_are_limited(make_server: ServerFactory) -> None:
    architect, release = held(default_replies()["architect"], after=0)
    script = scripted(architect=[architect, default_replies()["architect"]])
    async with FakeOpenAI(script) as fake:
        h = await keyed(make_server, fake, max_runs_per_principal=1)
        async with (
            Client(h.target, api_key=ALICE_KEY) as alice,
            Client(h.target, api_key=BOB_KEY) as bob,
            RunStream(alice.collaborate(TASK)) as first,
            grpc.aio.insecure_channel(h.target) as channel,
        ):
            try:
                await first.until(lambda e: kind(e) == "run_started")
                err = await refusal(alice.collaborate(TASK))
                assert err.code == StatusCode.RESOURCE_EXHAUSTED
                assert "FACILITAIR_MAX_RUNS_PER_PRINCIPAL" in err.message
                assert err.retry_after is not None
                assert err.retry_after > 0
                # The detail on the wire, as any gRPC client sees it.
                stub = pb_grpc.OrchestratorServiceStub(channel)
                raw = await failure(stub.Collaborate(pb.CollaborateRequest(task=TASK), metadata=bearer(ALICE_KEY)))
                assert raw.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert retry_delay(raw) == pytest.approx(err.retry_after)
                # Another principal is not held back by alice's limit.
                assert completed(await collect(bob.collaborate(TASK)))
            finally:
                release.set()
            assert completed(await first.to_end())
            # alice's slot is free again once her run ended.
            assert completed(await collect(alice.collaborate(TASK)))
            assert len((await alice.list_runs())[0]) == 2
    assert len(script.requests("architect")) == 3  # the refused calls never reached the provider


async def test_concurrent_runs_on_the_server_are_limited(make_server: ServerFactory) -> None:
    architect, release = held(default_replies()["architect"], after=0)
    script = scripted(architect=[architect, default_replies()["architect"]])
    async with FakeOpenAI(script) as fake:
        h = await keyed(make_server, fake, max_runs=1)
        async with (
            Client(h.target, api_key=ALICE_KEY) as alice,
            Client(h.target, api_key=BOB_KEY) as bob,
            RunStream(alice.collaborate(TASK)) as first,
        ):
            try:
                await first.until(lambda e: kind(e) == "run_started")
                for client in (bob, alice):
                    err = await refusal(client.collaborate(TASK))
                    assert err.code == StatusCode.RESOURCE_EXHAUSTED
                    assert "maximum of 1 runs" in err.message
                    assert err.retry_after is not None
                    assert err.retry_after > 0
                assert (await bob.list_runs())[0] == []
            finally:
                release.set()
            assert completed(await first.to_end())
            assert completed(await collect(bob.collaborate(TASK)))
    assert len(script.requests("architect")) == 2


async def test_the_rate_of_new_runs_is_limited_per_principal(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await keyed(make_server, fake, runs_per_minute=2)
        async with Client(h.target, api_key=ALICE_KEY) as alice, Client(h.target, api_key=BOB_KEY) as bob:
            for _ in range(2):
                assert completed(await collect(alice.collaborate(TASK)))
            err = await refusal(alice.collaborate(TASK))
            assert err.code == StatusCode.RESOURCE_EXHAUSTED
            assert "more than 2 runs a minute" in err.message
            assert err.retry_after is not None
            # The window is a minute: the first of her two runs leaves it a minute after it started.
            assert 0 < err.retry_after <= 60.0
            assert len((await alice.list_runs())[0]) == 2
            assert completed(await collect(bob.collaborate(TASK)))  # bob has a window of his own
    assert len(await owners(h.store)) == 3


# ----- request sizes ----------------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` levels deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"next": value}
    return value


SIX_AGENTS = {a: MINI for a in ("architect", "coder", "reviewer", "refiner", "tester", "documenter")}


@pytest.mark.parametrize(
    ("options", "field", "limit"),
    [
        ({"task": "x" * 20_001}, "task", "20000"),
        ({"context": {"blob": "x" * (64 * 1024)}}, "context", "65536"),
        ({"context": nested(9)}, "context", "8 levels"),
        ({"agent_models": SIX_AGENTS | {"critic": MINI}}, "agent_models", "6 agents"),
        ({"max_refinements": 11}, "max_refinements", "at most 10"),
        ({"client_request_id": "r" * 129}, "client_request_id", "at most 128"),
    ],
    ids=["task", "context-size", "context-depth", "agent-models", "max-refinements", "client-request-id"],
)
async def test_an_oversized_field_is_refused_naming_the_field_and_the_limit(
    make_server: ServerFactory, options: dict[str, Any], field: str, limit: str
) -> None:
    options = {"task": TASK} | options
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, model=MINI)
        err = await refusal(h.client.collaborate(**options))
        assert err.code == StatusCode.INVALID_ARGUMENT
        mine = [d for f, d in err.field_violations if f == field]
        assert mine, err.field_violations
        assert limit in mine[0]
        assert field in err.message
        assert (await h.client.list_runs())[0] == []
    assert fake.requests == []


@pytest.mark.parametrize(
    "options",
    [
        {"task": "x" * 20_000},
        {"context": {"blob": "x" * 60_000}},
        {"context": nested(8)},
        {"agent_models": SIX_AGENTS},
        {"max_refinements": 10},
        {"client_request_id": "r" * 128},
    ],
    ids=["task", "context-size", "context-depth", "agent-models", "max-refinements", "client-request-id"],
)
async def test_a_field_at_its_limit_is_accepted(make_server: ServerFactory, options: dict[str, Any]) -> None:
    options = {"task": TASK} | options
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, model=MINI)
        assert completed(await h.run(**options))


async def test_a_request_over_one_mebibyte_is_refused_by_grpc(make_server: ServerFactory) -> None:
    # Sent raw: the client library refuses a task this size before sending (tests/test_request_size.py).
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, model=MINI)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            raw = await failure(stub.Collaborate(pb.CollaborateRequest(task="x" * (1024 * 1024 + 1))))
        assert raw.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await h.client.list_runs())[0] == []
    assert fake.requests == []


def bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields a raw error's BadRequest detail names; fails the test if there is none."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    raise AssertionError(f"no BadRequest among {[d.type_url for d in status.details]}")


def bracket_token(depth: int) -> str:
    """A page token shaped like ours (url-safe base64 of JSON) holding lists nested `depth` deep."""
    return base64.urlsafe_b64encode(b"[" * depth + b"]" * depth).decode()


# A token exactly as long as the server reads (3 bytes of JSON make 4 characters); one more level is refused unread.
AT_THE_BOUND = MAX_PAGE_TOKEN_CHARS * 3 // 8


@pytest.mark.parametrize(
    "page_token",
    [bracket_token(100_000), bracket_token(AT_THE_BOUND), bracket_token(AT_THE_BOUND + 1)],
    ids=["nested-100k-deep", "at-the-length-bound", "just-past-the-bound"],
)
async def test_a_deeply_nested_page_token_is_an_invalid_argument(make_server: ServerFactory, page_token: str) -> None:
    h = await make_server()
    async with grpc.aio.insecure_channel(h.target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        err = await failure(stub.ListRuns(pb.ListRunsRequest(page_token=page_token)))
        # The server is still there and answers the same call with no token.
        assert list((await stub.ListRuns(pb.ListRunsRequest())).runs) == []
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert err.details() == "page_token: not a token returned by ListRuns"
    assert bad_request_fields(err) == ["page_token"]


# ----- slow watchers ----------------------------------------------------------------------------------------

TOKENS = 5000


async def test_a_watcher_that_stops_reading_misses_nothing_and_holds_nothing_up(make_server: ServerFactory) -> None:
    lines = [f"    x{i} = {i}\n" for i in range(TOKENS)]
    coder = Reply(chunks=["File: src/big.py\n```python\n", "def f() -> None:\n", *lines, "```\n"])
    architect, release = held(default_replies()["architect"], after=0)
    async with FakeOpenAI(scripted(architect=architect, coder=coder)) as fake:
        h = await make_server(openai=fake, model=MINI)
        async with RunStream(h.client.collaborate(TASK)) as run, grpc.aio.insecure_channel(h.target) as channel:
            try:
                run_id = (await run.until(lambda e: kind(e) == "run_started")).run_id
                slow = pb_grpc.OrchestratorServiceStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id))
                first = await asyncio.wait_for(slow.read(), EVENT_TIMEOUT)  # attached before anything else happens
            finally:
                release.set()
            # The run goes to its end while the slow watcher reads nothing.
            events = await run.to_end(within=120)
            assert completed(events)
            assert (await h.client.get_run(run_id)).state == pb.RUN_STATE_COMPLETED
            # Then the slow watcher gets every event, in order, the same as the live stream.
            watched: list[RunEvent] = []
            async with asyncio.timeout(120):
                response = first
                while isinstance(response, pb.WatchRunResponse):
                    watched.append(response.event)
                    response = await slow.read()
            assert await slow.code() == grpc.StatusCode.OK
    assert [e.seq for e in watched] == list(range(1, len(events) + 1))
    assert [e.SerializeToString() for e in watched] == [e.SerializeToString() for e in events]
    assert sum(1 for e in events if kind(e) == "token_delta" and e.token_delta.stage == 2) == TOKENS + 3


# ----- the CLI's flags ----------------------------------------------------------------------------------------


async def test_the_cli_connects_with_a_key_a_ca_and_a_client_certificate(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    pki = Pki.make(tmp_path)
    leaf = pki.ca.issue_cert("cli@example")
    cert, key = tmp_path / "cli.pem", tmp_path / "cli.key"
    cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    key.write_bytes(leaf.private_key_pem.bytes())
    async with FakeOpenAI(scripted()) as fake:
        h = await keyed(
            make_server,
            fake,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            tls_client_ca=pki.ca_cert,
        )
        target = ("--target", f"localhost:{h.server.port}")
        tls = ("--tls", "--ca", str(pki.ca_cert), "--cert", str(cert), "--key", str(key))
        # Key from FAC_API_KEY, certificate from --cert/--key: a whole run completes.
        code, out, err = await cli(
            None, "run", TASK, "--format", "jsonl", *target, *tls, env=cli_environment(FAC_API_KEY=ALICE_KEY)
        )
        assert code == 0, err
        assert "runCompleted" in out.splitlines()[-1]
        # --api-key works as well, and the key decides the principal (bob sees none of alice's runs).
        code, out, err = await cli(None, "runs", "--json", *target, *tls, "--api-key", BOB_KEY, env=cli_environment())
        assert code == 0, err
        assert json.loads(out)["runs"] == []
        code, out, err = await cli(None, "runs", "--json", *target, *tls, "--api-key", ALICE_KEY, env=cli_environment())
        assert code == 0, err
        assert [r["state"] for r in json.loads(out)["runs"]] == ["RUN_STATE_COMPLETED"]
        # No key: exit 4; no client certificate: exit 3 (no connection); --cert without --key: exit 2.
        code, _, err = await cli(None, "runs", *target, *tls, env=cli_environment())
        assert (code, "UNAUTHENTICATED" in err) == (4, True)
        code, _, err = await cli(
            None, "runs", *target, "--ca", str(pki.ca_cert), env=cli_environment(FAC_API_KEY=ALICE_KEY)
        )
        assert code == 3, err
        code, _, err = await cli(
            None,
            "runs",
            *target,
            "--ca",
            str(pki.ca_cert),
            "--cert",
            str(cert),
            env=cli_environment(FAC_API_KEY=ALICE_KEY),
        )
        assert code == 2, err
        assert "--key" in err
    assert list((await owners(h.store)).values()) == ["alice"]
    assert ALICE_KEY not in out + err
