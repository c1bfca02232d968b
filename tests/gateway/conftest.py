"""Fixtures the gateway's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

# Every read a test makes through this client is bounded.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose every request is bounded (CLIENT_TIMEOUT)."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        yield session
