"""Fixtures shared by the kernel tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pykka
import pytest

from actors.kernel import ActorSystem


@pytest.fixture
async def system() -> AsyncIterator[ActorSystem]:
    """An actor system, shut down after the test (and any pykka actor it left)."""
    actor_system = ActorSystem()
    yield actor_system
    await actor_system.shutdown()
    pykka.ActorRegistry.stop_all()
