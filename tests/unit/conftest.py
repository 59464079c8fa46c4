"""Fixtures of the unit layer: pure functions, no server, no network, no store."""

from __future__ import annotations

import pytest

from tests.harness.servers import clear_server_environment


@pytest.fixture(autouse=True)
def no_server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built here see no FACILITAIR_* or provider variable of the machine running the tests."""
    clear_server_environment(monkeypatch)
