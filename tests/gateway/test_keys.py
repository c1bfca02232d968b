"""API keys end to end: the CLI and the admin API against a real SQLite file, every 401 and
403 with the SDK's matching exception, scopes, revocation within a second, throttling."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from actors.auth.keys import hash_secret, split_key
from gateway.process.config import load_config
from gateway.process.server import RunningServer, start_gateway
from tests.gateway.harness import ADMIN_KEY, READ_TIMEOUT_S, bounded_client, mock_service

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@asynccontextmanager
async def keyed_gateway(tmp_path: Path, **auth: Any) -> AsyncIterator[tuple[RunningServer, Path]]:
    """A gateway with a key store in tmp_path, models m and other, and `auth` settings."""
    store = tmp_path / "keys.db"
    async with mock_service(model="m", ttft=0.0) as upstream:
        config = {
            "listen": "127.0.0.1:0",
            "auth": {"admin_keys": [ADMIN_KEY], "key_store": str(store), **auth},
            "logging": {"access_log": False},
            "models": [
                {"name": "m", "aliases": ["m-alias"], "backends": [{"url": upstream.url}]},
                {"name": "other", "backends": [{"url": upstream.url, "model": "m"}]},
            ],
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        server = await start_gateway(load_config(path), config_path=str(path))
        try:
            yield server, store
        finally:
            await server.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def sdk(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=READ_TIMEOUT_S
    )


async def chat_once(url: str, key: str, model: str = "m") -> None:
    async with sdk(url, key) as client:
        await client.chat.completions.create(model=model, messages=CHAT)


async def list_once(url: str, key: str) -> list[str]:
    async with sdk(url, key) as client:
        return [m.id for m in (await client.models.list()).data]


async def assert_refused_within(url: str, key: str, seconds: float) -> None:
    """`key` is refused no later than `seconds` (the cache's lifetime) after now, give or take
    the time one request takes on this machine."""
    started = time.monotonic()
    slowest = 0.0
    async with sdk(url, key) as client:
        while True:
            sent = time.monotonic()
            try:
                await client.models.list()
            except openai.AuthenticationError:
                return
            finally:
                slowest = max(slowest, time.monotonic() - sent)
            # A second's margin besides the slowest request: a loaded machine stalls.
            assert time.monotonic() - started <= seconds + 1.0 + 2 * slowest, "still accepted"


async def test_cli_key_lifecycle_against_a_running_gateway(tmp_path: Path) -> None:
    async with keyed_gateway(tmp_path) as (gateway, store):
        created = cli("create", "--db", str(store), "--name", "ci", "--models", "m", "--rpm", "60")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert split_key(key) is not None
        key_id = key.split("-")[2]
        assert "not shown again" in created.stderr
        async with sdk(gateway.url, key) as client:
            answer = await client.chat.completions.create(model="m", messages=CHAT)
            assert answer.choices[0].message.content

        listed = cli("list", "--db", str(store))
        assert key_id in listed.stdout
        assert "active" in listed.stdout
        assert "rpm=60" in listed.stdout
        assert key.split("-", 3)[3] not in listed.stdout + listed.stderr  # never the secret
        assert (
            hash_secret(key.split("-", 3)[3])
            not in cli("list", "--db", str(store), "--json").stdout
        )

        rotated = cli("rotate", "--db", str(store), key_id)
        assert rotated.returncode == 0, rotated.stderr
        new_key = rotated.stdout.strip()
        await assert_refused_within(gateway.url, key, 1.0)
        async with sdk(gateway.url, new_key) as client:
            assert [m.id for m in (await client.models.list()).data] == ["m", "m-alias"]

        revoked = cli("revoke", "--db", str(store), new_key.split("-")[2])
        assert revoked.returncode == 0
        assert "revoked" in revoked.stdout
        await assert_refused_within(gateway.url, new_key, 1.0)
        assert cli("revoke", "--db", str(store), "0123456789ab").returncode == 1


async def test_admin_api_key_lifecycle_takes_effect_at_once(tmp_path: Path) -> None:
    async with keyed_gateway(tmp_path) as (gateway, _), bounded_client() as http:
        async with http.post(
            f"{gateway.url}/admin/keys", json={"name": "svc", "models": ["m"]}, headers=ADMIN
        ) as response:
            assert response.status == 201
            created = await response.json()
        key, key_id = created["key"], created["id"]
        assert created["prefix"] == f"sk-citadel-{key_id}-"
        async with sdk(gateway.url, key) as client:
            await client.chat.completions.create(model="m", messages=CHAT)

        async with http.get(f"{gateway.url}/admin/keys", headers=ADMIN) as response:
            listing = await response.json()
        assert [k["id"] for k in listing["keys"]] == [key_id]
        assert "secret_sha256" not in listing["keys"][0]
        assert "key" not in listing["keys"][0]

        async with http.post(f"{gateway.url}/admin/keys/{key_id}/rotate", headers=ADMIN) as r:
            assert r.status == 201
            rotated = await r.json()
        assert rotated["replaces"] == key_id
        with pytest.raises(openai.AuthenticationError):
            await list_once(gateway.url, key)  # at once: no cache delay here
        async with sdk(gateway.url, rotated["key"]) as client:
            await client.chat.completions.create(model="m", messages=CHAT)

        async with http.delete(f"{gateway.url}/admin/keys/{rotated['id']}", headers=ADMIN) as r:
            assert r.status == 200
            assert (await r.json())["revoked_at"] is not None
        with pytest.raises(openai.AuthenticationError):
            await list_once(gateway.url, rotated["key"])

        async with http.post(f"{gateway.url}/admin/keys/0123456789ab/revoke", headers=ADMIN) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "key_not_found"
        async with http.post(
            f"{gateway.url}/admin/keys", json={"rpm": 0}, headers=ADMIN
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "rpm"


async def test_every_refusal_is_a_401_with_one_message(tmp_path: Path) -> None:
    async with keyed_gateway(tmp_path) as (gateway, store), bounded_client() as http:
        good = cli("create", "--db", str(store)).stdout.strip()
        expired = cli("create", "--db", str(store), "--expires-in-days", "0.000001").stdout.strip()
        revoked = cli("create", "--db", str(store)).stdout.strip()
        cli("revoke", "--db", str(store), revoked.split("-")[2])
        key_id, secret = good.split("-")[2], good.split("-", 3)[3]
        wrong = {
            "malformed": "sk-something-else",
            "unknown id": f"sk-citadel-0123456789ab-{secret}",
            "wrong secret": f"sk-citadel-{key_id}-{'x' * len(secret)}",
            "revoked": revoked,
            "expired": expired,
            "an admin key on a model endpoint": ADMIN_KEY,
        }
        messages = set()
        for case, key in wrong.items():
            with pytest.raises(openai.AuthenticationError) as caught:
                await chat_once(gateway.url, key)
            assert caught.value.status_code == 401, case
            assert caught.value.code == "invalid_api_key", case
            messages.add(caught.value.message)
        assert len(messages) == 1  # nothing tells the cases apart
        async with http.get(f"{gateway.url}/v1/models") as response:  # no key at all
            assert response.status == 401
            assert "didn't provide an API key" in (await response.json())["error"]["message"]
        async with http.get(f"{gateway.url}/v1/models", headers={"api-key": good}) as response:
            assert response.status == 200  # Azure-style header


async def test_scopes_models_endpoints_and_admin(tmp_path: Path) -> None:
    async with keyed_gateway(tmp_path) as (gateway, store), bounded_client() as http:
        only_m = cli("create", "--db", str(store), "--models", "m").stdout.strip()
        chat_only = cli("create", "--db", str(store), "--endpoints", "chat.completions").stdout
        admin = cli("create", "--db", str(store), "--admin", "--models", "other").stdout.strip()
        async with sdk(gateway.url, only_m) as client:
            await client.chat.completions.create(model="m-alias", messages=CHAT)  # its alias
            with pytest.raises(openai.PermissionDeniedError) as caught:
                await client.chat.completions.create(model="other", messages=CHAT)
            assert caught.value.code == "model_not_allowed"
            assert [m.id for m in (await client.models.list()).data] == ["m", "m-alias"]
        async with sdk(gateway.url, chat_only.strip()) as client:
            await client.chat.completions.create(model="m", messages=CHAT)
            with pytest.raises(openai.PermissionDeniedError) as caught:
                await client.embeddings.create(model="m", input="x")
            assert caught.value.code == "endpoint_not_allowed"
        async with sdk(gateway.url, admin) as client:  # the admin flag is no model scope
            with pytest.raises(openai.PermissionDeniedError):
                await client.chat.completions.create(model="m", messages=CHAT)
        model_key = {"Authorization": f"Bearer {only_m}"}
        async with http.get(f"{gateway.url}/admin/actors", headers=model_key) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "admin_required"
        admin_headers = {"Authorization": f"Bearer {admin}"}
        async with http.get(f"{gateway.url}/admin/keys", headers=admin_headers) as response:
            assert response.status == 200


async def test_configured_hashed_keys_and_failure_throttling(tmp_path: Path) -> None:
    key = "sk-citadel-00000000beef-" + "s" * 43
    configured = {"id": "00000000beef", "secret_sha256": hash_secret("s" * 43)}
    async with (
        keyed_gateway(tmp_path, keys=[configured], failure_limit=3) as (gateway, _),
        bounded_client() as http,
    ):
        async with sdk(gateway.url, key) as client:
            await client.chat.completions.create(model="m", messages=CHAT)
        bad = {"Authorization": "Bearer sk-citadel-00000000beef-" + "t" * 43}
        for _ in range(3):
            async with http.get(f"{gateway.url}/v1/models", headers=bad) as response:
                assert response.status == 401
        async with http.get(f"{gateway.url}/v1/models", headers=bad) as response:
            assert response.status == 429
            body = await response.json()
            assert body["error"]["code"] == "too_many_auth_failures"
            assert 1 <= int(response.headers["Retry-After"]) <= 60
        # The throttle slows failures, never a valid key: the good key from the same
        # address (an office behind one NAT) is served at once.
        async with http.get(
            f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            assert response.status == 200
        await asyncio.sleep(0)


async def test_a_failing_key_store_gives_503_and_crashes_nothing(tmp_path: Path) -> None:
    async with keyed_gateway(tmp_path) as (gateway, store), bounded_client() as http:
        key = cli("create", "--db", str(store)).stdout.strip()
        for suffix in ("", "-wal", "-shm"):  # the disk goes bad under the running gateway
            path = store.with_name(store.name + suffix)
            if path.exists():
                path.write_bytes(b"\x00garbage" * 4096)
        async with http.get(
            f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            assert response.status == 503
            assert "key store" in (await response.json())["error"]["message"]
        async with http.get(f"{gateway.url}/admin/actors", headers=ADMIN) as response:
            tree = (await response.json())["actors"][0]
        auth = next(child for child in tree["children"] if child["name"] == "auth")
        assert auth["restarts"] == 0
        assert auth["state"] == "running"
