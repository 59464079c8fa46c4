"""The webhook configuration: the endpoints file, the allow-list by resolved address, the retry waits."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from facilitair.server.settings import ConfigError
from facilitair.server.webhooks import sender
from facilitair.server.webhooks.config import AllowList, Endpoint, is_public, load_endpoints, retry_schedule
from facilitair.server.webhooks.dispatcher import next_wait
from facilitair.server.webhooks.sender import Outcome, Sender

SECRET = "whsec_" + "A" * 44  # 33 bytes


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    return path


def test_endpoints_load_with_their_defaults(tmp_path: Path) -> None:
    [e] = load_endpoints(write(tmp_path, f'[[endpoint]]\nurl = "https://h.example/x"\nsecret = "{SECRET}"\n'))
    assert e.events == {"run.completed", "run.failed", "run.cancelled"}
    assert (e.previous_secret, e.principal) == (None, None)
    assert e.wants("run.failed", "anyone")
    assert SECRET not in repr(e)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('url = "ftp://h/x"\nsecret = "S"', "endpoint 1: url: must be an http:// or https:// URL with a host"),
        ('url = "https://u:p@h/x"\nsecret = "S"', "endpoint 1: url: must not hold credentials"),
        ('url = "https://h/x"\nsecret = "whsec_!!"', "endpoint 1 (https://h/x): secret: the part after 'whsec_' is"),
        ('url = "https://h/x"\nsecret = "whsec_AAAA"', "endpoint 1 (https://h/x): secret: must hold 24 to 64 bytes"),
        ('url = "https://h/x"\nsecret = "S"\nevents = ["run.done"]', "endpoint 1 (https://h/x): unknown events"),
        ('url = "https://h/x"\nsecret = "S"\ncolour = 1', "endpoint 1: unknown keys ['colour']"),
        ('url = "https://a..b/x"\nsecret = "S"', "endpoint 1: url: its host or port cannot be connected to"),
        ('url = "https://h:99999/x"\nsecret = "S"', "endpoint 1: url: its host or port cannot be connected to"),
        ('url = "https://h:0/x"\nsecret = "S"', "endpoint 1: url: its host or port cannot be connected to"),
    ],
)
def test_a_wrong_endpoint_is_named_and_its_secret_never_shown(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as wrong:
        load_endpoints(write(tmp_path, "[[endpoint]]\n" + body.replace('"S"', f'"{SECRET}"') + "\n"))
    assert str(wrong.value).startswith(message)
    assert SECRET not in str(wrong.value)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("fe80::1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("100.100.100.200", False),  # shared address space (100.64.0.0/10): a cloud's metadata service
        ("100.64.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 carrying 127.0.0.1
        ("2002:a9fe:a9fe::", False),  # 6to4 carrying the metadata address
        ("2002:5db8:d822::", True),  # 6to4 carrying a public address
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the metadata address
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_the_allow_list_permits_by_name_or_network() -> None:
    allow = AllowList.parse(" hooks.internal., 10.0.0.0/8 ,::1")
    assert allow.permits("hooks.internal", ipaddress.ip_address("192.168.1.1"))
    assert allow.permits("other", ipaddress.ip_address("10.9.9.9"))
    assert allow.permits("other", ipaddress.ip_address("::1"))
    assert not allow.permits("other", ipaddress.ip_address("127.0.0.1"))
    assert AllowList.parse(None).permits("x", ipaddress.ip_address("8.8.8.8"))


def test_retry_waits_follow_the_schedule_with_jitter_and_retry_after() -> None:
    schedule = retry_schedule("5, 300")
    assert schedule == (5.0, 300.0)
    assert all(4.0 <= (next_wait(schedule, 1, None) or 0) <= 6.0 for _ in range(50))
    assert next_wait(schedule, 1, 120.0) == 120.0  # a longer Retry-After wins
    assert 240.0 <= (next_wait(schedule, 2, 1.0) or 0) <= 360.0  # a shorter one does not
    assert next_wait(schedule, 3, None) is None  # spent: the delivery fails
    with pytest.raises(ConfigError):
        retry_schedule("5,soon")


def test_endpoints_by_name_address_and_idn_load(tmp_path: Path) -> None:
    for url in ("https://h.example:8443/x", "http://[::1]:80/x", "http://10.0.0.1/x", "https://bücher.example/x"):
        [e] = load_endpoints(write(tmp_path, f'[[endpoint]]\nurl = "{url}"\nsecret = "{SECRET}"\n'))
        assert e.url == url


async def test_an_attempt_at_a_url_no_request_can_be_made_to_is_refused_not_raised() -> None:
    sender = Sender(AllowList.parse(None), 5.0, connections=1)
    try:
        endpoint = Endpoint(url="http://a..b/x", events=frozenset({"run.completed"}), secret=SECRET)
        attempt = await sender.send(endpoint, "msg_1", b"{}", "run.completed")
    finally:
        await sender.aclose()
    assert attempt.outcome is Outcome.REFUSED
    assert attempt.error == "target refused: the URL's host or port cannot be connected to"


def test_a_retry_after_of_other_digits_is_ignored_not_raised() -> None:
    assert sender._retry_after("120") == 120.0
    assert sender._retry_after("²") is None  # str.isdigit says yes, float() says no
    assert sender._retry_after("١٢") is None  # Arabic-Indic digits: not HTTP's DIGIT
    assert sender._classify(503, {"Retry-After": "²"}) == sender.Attempt(Outcome.FAILED, 503, "HTTP 503", None)
