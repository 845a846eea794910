"""Shared fixtures: unique names per test so tests never collide on a broker."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A unique topic namespace for this test."""
    stem = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:24]
    return f"t-{stem}-{uuid.uuid4().hex[:8]}"
