"""Shared fixtures."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Records (and refuses) every outgoing connection: a test asserts the list stays empty.

    Stands in for "fails at once": what made missing data slow was retrying downloads, which this
    catches on any machine, loaded or not, where a wall-clock bound would not.
    """
    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network disabled in this test (connect to {address!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture(autouse=True)
def _no_user_compile_cache(monkeypatch):
    """CLI runs inside the tests never write to the user's cache folder."""
    monkeypatch.setenv("UNDESIRABLE_JAX_CACHE", "off")
