"""Request-supplied webhook URLs: the [request_urls] table, which hosts the allow-list admits, the stored spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from facilitair.server.pipeline.spec import webhook_url_of
from facilitair.server.settings import ConfigError
from facilitair.server.webhooks.config import AllowList, WebhookConfig, load_file, redacted

SECRET = "whsec_" + "A" * 44  # 33 bytes
OLD = "whsec_" + "B" * 44


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    return path


def test_the_request_urls_table_loads_its_secrets_and_hides_them(tmp_path: Path) -> None:
    endpoints, request_urls = load_file(
        write(tmp_path, f'[request_urls]\nsecret = "{SECRET}"\nprevious_secret = "{OLD}"\n')
    )
    assert endpoints == ()
    assert request_urls is not None
    assert (request_urls.secret, request_urls.previous_secret) == (SECRET, OLD)
    assert SECRET not in repr(request_urls)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[request_urls]\nsecret = "S"', "request_urls: secret: must be a Standard Webhooks secret"),
        (f'[request_urls]\nsecret = "{SECRET}"\nurl = "https://h/x"', "request_urls: unknown keys ['url']"),
        ('request_urls = "yes"', "request_urls: must be a table"),
    ],
)
def test_a_wrong_request_urls_table_is_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(write(tmp_path, body + "\n"))
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("allow", "url", "accepted"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/hook?t=1", True),
        ("10.0.0.0/8", "http://10.1.2.3/hook", True),
        ("hooks.example.com", "https://HOOKS.example.com./hook", True),
        ("hooks.example.com", "https://example.com/hook", False),  # public, yet not listed
        ("127.0.0.1", "http://127.0.0.2/hook", False),
        ("", "https://hooks.example.com/hook", False),
    ],
)
def test_a_request_url_is_accepted_only_when_the_allow_list_names_its_host(
    tmp_path: Path, allow: str, url: str, accepted: bool
) -> None:
    _, request_urls = load_file(write(tmp_path, f'[request_urls]\nsecret = "{SECRET}"\n'))
    with_secret = WebhookConfig((), AllowList.parse(allow), (), 1.0, request_urls)
    endpoint = with_secret.request_endpoint(url)
    assert (endpoint is not None) == accepted
    if endpoint is not None:
        assert (endpoint.url, endpoint.secret) == (url, SECRET)
        assert "t=1" not in repr(endpoint)
    # Without the [request_urls] table no request URL is accepted at all.
    assert WebhookConfig((), AllowList.parse(allow), (), 1.0).request_endpoint(url) is None


def test_redacted_drops_the_query_and_fragment() -> None:
    assert redacted("https://h.example:8443/a/b?token=x#f") == "https://h.example:8443/a/b"


@pytest.mark.parametrize(
    ("stored", "url"),
    [
        ('{"version": 3, "webhook_url": "https://h.example/x"}', "https://h.example/x"),
        ('{"version": 3}', ""),  # a spec stored before request URLs existed
        ('{"webhook_url": 7}', ""),
        ("not json", ""),  # the run fails as unreadable anyway; its recorder must still be made
        ("[]", ""),
    ],
)
def test_the_webhook_url_is_read_from_any_stored_spec(stored: str, url: str) -> None:
    assert webhook_url_of(stored) == url
