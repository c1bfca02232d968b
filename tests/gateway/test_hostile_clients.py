"""What a hostile or careless client sends to the edge: ids, parameters and key settings
that must be refused or replaced, never echoed, stored or taken at face value."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from actors.auth.keys import KeyScopes
from gateway.process.config import ConfigError, parse_config
from tests.gateway.harness import ADMIN_KEY, API_KEY, ModelPlan, deployment

TIMEOUT = aiohttp.ClientTimeout(total=30)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_a_request_id_that_is_a_key_is_replaced_never_echoed() -> None:
    async with deployment([ModelPlan("m")]) as gw, aiohttp.ClientSession(timeout=TIMEOUT) as http:
        for sent in (API_KEY, "sk-citadel-0123456789ab-" + "s" * 43, "x" * 129, "a b", "ok-id-7"):
            async with http.get(
                gw.url + "/v1/models", headers={**AUTH, "X-Request-ID": sent}
            ) as response:
                assert response.status == 200
                echoed = response.headers["x-request-id"]
            if sent == "ok-id-7":
                assert echoed == sent
            else:
                assert uuid.UUID(echoed).version == 4, sent


@pytest.mark.parametrize(
    "query", ["hours=nan", "hours=inf", "hours=1e308", "since=1e400", "until=-1"]
)
async def test_usage_parameters_must_be_finite_numbers(query: str) -> None:
    async with deployment([ModelPlan("m")]) as gw, aiohttp.ClientSession(timeout=TIMEOUT) as http:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with http.get(f"{gw.url}/admin/usage?{query}", headers=headers) as response:
            assert response.status == 400
            body = await response.json()  # valid JSON: no NaN, no Infinity
            assert body["error"]["param"] == query.split("=")[0]


def test_key_scopes_are_strict() -> None:
    for bad in ({"admin": "yes"}, {"expires_at": -1}, {"rpm": "10"}, {"expires_at": "tomorrow"}):
        with pytest.raises(ValidationError):
            KeyScopes.model_validate_json(__import__("json").dumps(bad))
    assert KeyScopes(admin=True).models == ()  # admin-only unless models are given
    assert KeyScopes(admin=True, models=("m",)).models == ("m",)


@pytest.mark.parametrize("days", ["0", "-1", "nan", "inf"])
def test_the_cli_refuses_a_key_that_would_never_expire_or_be_born_expired(
    tmp_path: Path, days: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", "--db", str(tmp_path / "k.db"),
         f"--expires-in-days={days}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "sk-citadel-" not in done.stdout


@pytest.mark.parametrize(
    "url", ["http://ftp://x", "http://h:", "http://user:pw@h:8000", "ftp://h", "http://h?x=1"]
)
def test_a_backend_url_must_be_one_plain_http_url(url: str) -> None:
    text = f"models:\n  - name: m\n    backends:\n      - url: {url}\n"
    with pytest.raises(ConfigError, match="url"):
        parse_config(text)


def test_key_store_and_ledger_files_are_for_the_gateways_user_alone(tmp_path: Path) -> None:
    from actors.auth.store import KeyStore
    from actors.ledger.store import LedgerStore

    keys, ledger = (
        KeyStore(tmp_path / "state" / "keys.db"),
        LedgerStore(tmp_path / "u" / "usage.db"),
    )
    try:
        keys.create(KeyScopes())  # a write: the -wal and -shm files exist now
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        for name in ("keys.db", "keys.db-wal", "keys.db-shm"):
            assert (tmp_path / "state" / name).stat().st_mode & 0o777 == 0o600, name
        assert (tmp_path / "u" / "usage.db").stat().st_mode & 0o777 == 0o600
    finally:
        keys.close()
        ledger.close()


def test_the_unit_keeps_state_files_private() -> None:
    unit = (Path(__file__).parents[2] / "ops/systemd/citadel-gateway.service").read_text()
    assert "UMask=0077" in unit
    assert "StateDirectoryMode=0700" in unit


async def test_behind_a_trusted_proxy_the_throttle_counts_each_client_not_the_proxy() -> None:
    """21 bad requests a minute through one load balancer once locked out every client."""
    from gateway.process.config import (
        AuthSettings,
        ConnectionSettings,
        GatewayConfig,
        LoggingSettings,
    )
    from gateway.process.server import start_gateway
    from tests.gateway.harness import mock_service

    def forwarded(client: str, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "X-Forwarded-For": f"6.6.6.6, {client}"}

    async with mock_service(model="m", ttft=0.0) as upstream:
        config = GatewayConfig.model_validate(
            {
                "listen": "127.0.0.1:0",
                "models": [{"name": "m", "backends": [{"url": upstream.url}]}],
                "auth": AuthSettings(api_keys=(API_KEY,), failure_limit=3).model_dump(),
                "logging": LoggingSettings(access_log=False).model_dump(),
                "connections": ConnectionSettings(trusted_proxies=("127.0.0.1/32",)).model_dump(),
            }
        )
        server = await start_gateway(config)
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                url = server.url + "/v1/models"
                seen = []
                for _ in range(5):
                    async with http.get(
                        url, headers=forwarded("10.0.0.1", "sk-wrong-key-000")
                    ) as r:
                        seen.append(r.status)
                assert seen == [401, 401, 401, 429, 429]  # that client, slowed
                # Another client behind the same proxy: not throttled for the first one.
                async with http.get(url, headers=forwarded("10.0.0.2", "sk-wrong-key-000")) as r:
                    assert r.status == 401
                # And a valid key is never refused, even from the throttled client.
                async with http.get(url, headers=forwarded("10.0.0.1", API_KEY)) as r:
                    assert r.status == 200
        finally:
            await server.close()


def test_forwarded_addresses_are_believed_only_from_trusted_proxies() -> None:
    from aiohttp.test_utils import make_mocked_request

    from gateway.http.client_address import client_address

    trusted = [__import__("ipaddress").ip_network("10.0.0.0/8")]

    def address(peer: str, **headers: str) -> str:
        request = make_mocked_request("GET", "/", headers=headers)
        request._transport_peername = (peer, 1234)
        return client_address(request, trusted)

    assert address("10.1.1.1", **{"X-Forwarded-For": "203.0.113.9"}) == "203.0.113.9"
    # A client's own entries sit left of what the proxies appended: never reached.
    assert address("10.1.1.1", **{"X-Forwarded-For": "1.2.3.4, 203.0.113.9"}) == "203.0.113.9"
    assert address("10.1.1.1", **{"X-Forwarded-For": "203.0.113.9, 10.2.2.2"}) == "203.0.113.9"
    assert address("203.0.113.7", **{"X-Forwarded-For": "1.2.3.4"}) == "203.0.113.7"  # untrusted
    assert address("10.1.1.1", Forwarded='for="[2001:db8::1]";proto=https') == "2001:db8::1"
    assert address("10.1.1.1", **{"X-Forwarded-For": "garbage"}) == "10.1.1.1"
