"""The response cache key: the same request by the same caller always gets the same key; any change misses.

Property tests over every field the key is made of: CompletionRequest's fields (but its client-side timeout),
the caller, the provider, its endpoint and the prompt templates' version.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from facilitair.server.pipeline.cache import cache_key, chunks
from facilitair.server.providers import CompletionRequest

texts = st.text(max_size=40)
temperatures = st.one_of(st.none(), st.floats(min_value=0, max_value=2, allow_nan=False))
requests = st.builds(
    CompletionRequest,
    model=texts,
    system=texts,
    prompt=texts,
    max_tokens=st.integers(min_value=1, max_value=200_000),
    temperature=temperatures,
    timeout=st.one_of(st.none(), st.floats(min_value=0.1, max_value=600)),
)
# Everything the key is made of, as keyword arguments of `key` below.
parts = st.fixed_dictionaries(
    {"principal": texts, "provider": texts, "endpoint": texts, "request": requests, "version": st.integers(0, 9)}
)
REQUEST_FIELDS = [f.name for f in dataclasses.fields(CompletionRequest) if f.name != "timeout"]
OTHER_PARTS = ["principal", "provider", "endpoint", "version"]


def key(p: dict[str, Any]) -> str:
    return cache_key(p["principal"], p["provider"], p["endpoint"], p["request"], p["version"])


def changed(value: object, other: object) -> bool:
    """Whether a drawn replacement really differs (0.0 and -0.0 are the same temperature to a model: excluded)."""
    return value != other or type(value) is not type(other)


@given(parts)
def test_the_same_request_has_the_same_key(p: dict[str, Any]) -> None:
    assert key(p) == key(dict(p, request=dataclasses.replace(p["request"])))
    assert len(key(p)) == 64


@given(parts, st.sampled_from(REQUEST_FIELDS), st.data())
def test_changing_any_request_field_misses(p: dict[str, Any], name: str, data: st.DataObject) -> None:
    strategy = {"max_tokens": st.integers(min_value=1, max_value=200_000), "temperature": temperatures}.get(name, texts)
    value = data.draw(strategy)
    before = getattr(p["request"], name)
    if changed(value, before):
        assert key(p) != key(dict(p, request=dataclasses.replace(p["request"], **{name: value})))


@given(parts, st.sampled_from(OTHER_PARTS), st.data())
def test_changing_the_caller_provider_endpoint_or_templates_misses(
    p: dict[str, Any], name: str, data: st.DataObject
) -> None:
    value = data.draw(st.integers(0, 9) if name == "version" else texts)
    if value != p[name]:
        assert key(p) != key(dict(p, **{name: value}))


@given(parts, st.one_of(st.none(), st.floats(min_value=0.1, max_value=600)))
def test_the_client_side_timeout_is_not_part_of_the_key(p: dict[str, Any], timeout: float | None) -> None:
    assert key(p) == key(dict(p, request=dataclasses.replace(p["request"], timeout=timeout)))


@given(st.text(max_size=2000), st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=300))
def test_a_hit_text_goes_out_in_at_most_the_bounded_number_of_pieces(text: str, most: int, least: int) -> None:
    pieces = chunks(text, most, least)
    assert "".join(pieces) == text
    assert len(pieces) <= most
    assert all(pieces)
    assert all(len(p) >= least for p in pieces[:-1])
