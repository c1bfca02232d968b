"""Test-session set-up: production logging (JSON, secrets filter) for every test, and a
check after each test that nothing it printed or logged holds key material, or any of the
examples the guardrails' detectors must find."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest

from gateway.process.defaults import DEMO_ADMIN_KEY, DEMO_API_KEY
from gateway.process.observability import BufferedLineLogger, configure_logging
from tests.gateway.guardrails.test_detectors import FOUND
from tests.gateway.harness import ADMIN_KEY, API_KEY

# A whole sk-citadel key (its id alone is fine to show).
FULL_KEY = re.compile(r"sk-citadel-[0-9a-f]{12}-[A-Za-z0-9_-]{20,}")
# Every key the tests use, and the shapes of keys sent on purpose as wrong ones.
KEY_MATERIAL = (API_KEY, ADMIN_KEY, DEMO_API_KEY, DEMO_ADMIN_KEY, "sk-not-a-real-key")
# What the guardrails' detectors must find: sent through guarded models by the tests, and
# never to be seen in a log line, whatever a rule's action.
DETECTED = tuple(example for _, examples in FOUND.values() for example in examples)


@pytest.fixture(scope="session", autouse=True)
def production_logging() -> Iterator[BufferedLineLogger]:
    """The production pipeline for the whole session; tests flush it to read what it wrote."""
    output = configure_logging("debug", "json")
    yield output
    output.flush()


@pytest.fixture(autouse=True)
def no_key_material_in_output(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    yield
    out, err = capfd.readouterr()
    leaked = [key for key in (*KEY_MATERIAL, *DETECTED) if key in out or key in err]
    leaked += FULL_KEY.findall(out + err)  # any store or configured key, whole
    sys.stdout.write(out)  # give the output back to pytest's report
    sys.stderr.write(err)
    assert not leaked, f"key material or detected text in the test's output: {leaked}"
