"""The admin console in a real browser: Debian's Chromium driven by Playwright, against a
gateway with a key store and a ledger. Signing in (a wrong key refused), the live actor tree
and a restart from it, creating a key (shown once) and revoking it (refused by the API at
once), the usage charts drawn from real requests, the configuration with no secret in it, and
a reload; the page's Content-Security-Policy is strict and the page breaks none of it.
Screenshots go to artifacts/console/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest
import yaml
from playwright.async_api import Browser, Page, async_playwright

from gateway.process.config import load_config
from gateway.process.server import RunningServer, start_gateway
from tests.gateway.harness import ADMIN_KEY, READ_TIMEOUT_S, bounded_client, mock_service

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@asynccontextmanager
async def console_gateway(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with mock_service(model="m", ttft=0.0) as upstream:
        config = {
            "listen": "127.0.0.1:0",
            "auth": {"admin_keys": [ADMIN_KEY], "key_store": str(tmp_path / "keys.db")},
            "usage": {"path": str(tmp_path / "usage.db"), "flush_interval": 0.05},
            "logging": {"access_log": False},
            "models": [
                {"name": "m", "backends": [{"url": upstream.url, "api_key": "sk-upstream-secret"}]},
                {"name": "n", "backends": [{"url": upstream.url, "model": "m"}]},
            ],
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        server = await start_gateway(load_config(path), config_path=str(path))
        try:
            yield server
        finally:
            await server.close()


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def new_page(chromium: Browser, url: str, problems: list[str]) -> Page:
    page = await chromium.new_page(viewport={"width": 1200, "height": 800})
    page.set_default_timeout(15_000)
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )  # a CSP violation is one of these ("Refused to …")
    page.on("pageerror", lambda error: problems.append(str(error)))
    await page.goto(f"{url}/admin/")
    return page


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def create_key(url: str, **scopes: object) -> tuple[str, str]:
    async with bounded_client() as http, http.post(
        f"{url}/admin/keys", json=scopes, headers=ADMIN
    ) as response:  # fmt: skip
        body = await response.json()
        return body["id"], body["key"]


async def chat(url: str, key: str, model: str, count: int) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=READ_TIMEOUT_S
    ) as client:
        for _ in range(count):
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )


async def test_the_console_in_a_real_browser(tmp_path: Path) -> None:
    problems: list[str] = []
    async with console_gateway(tmp_path) as gw, browser() as chromium:
        _, team_a = await create_key(gw.url, name="team-a")
        _, team_b = await create_key(
            gw.url, name="team-b", budget={"tokens": 100000, "period": "day"}
        )
        await chat(gw.url, team_a, "m", 3)
        await chat(gw.url, team_b, "n", 2)
        page = await new_page(chromium, gw.url, problems)
        async with bounded_client() as http, http.get(f"{gw.url}/admin/") as response:
            csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "default-src 'none'" in csp

        # Sign-in: a wrong key is refused, the admin key lets in.
        await page.fill("#admin-key", "sk-not-a-real-key")
        await page.click("#sign-in-button")
        await page.wait_for_selector("#sign-in-error:has-text('Not signed in')")
        await page.fill("#admin-key", ADMIN_KEY)
        await page.click("#sign-in-button")
        await page.wait_for_selector("#actor-tree li[data-path='root/limiter']")
        await shot(page, "actors")

        # A restart from the tree.
        limiter = page.locator("li[data-path='root/limiter'] > button.restart")
        await limiter.click()
        await page.wait_for_selector("li[data-path='root/limiter'] > .hint:has-text('restarts 1')")

        # Backends, live.
        await page.click("nav button[data-view=backends]")
        await page.wait_for_selector("#backend-table tbody tr")
        await shot(page, "backends")

        # A key created (shown once) and revoked.
        await page.click("nav button[data-view=keys]")
        await page.fill("#key-name", "console-made")
        await page.fill("#key-rpm", "60")
        await page.fill("#key-budget", "5000")
        await page.select_option("#key-period", "week")
        await page.click("#create-key-button")
        await page.wait_for_selector("#new-key:has-text('sk-citadel-')")
        shown = await page.locator("#new-key").inner_text()
        made = shown.split()[0]
        assert made.startswith("sk-citadel-")
        await chat(gw.url, made, "m", 1)
        row = page.locator("#key-table tr", has_text="console-made")
        await row.locator("text=per week").wait_for()
        await shot(page, "keys")
        await row.locator("button.revoke").click()
        await row.locator("td.state:has-text('revoked')").wait_for()
        with pytest.raises(openai.AuthenticationError):
            await chat(gw.url, made, "m", 1)

        # The usage charts, drawn from the ledger.
        await page.click("nav button[data-view=usage]")
        await page.wait_for_selector("#chart-key svg rect.bar")
        keys_drawn = await page.locator("#chart-key rect.bar").count()
        models_drawn = await page.locator("#chart-model rect.bar").count()
        assert keys_drawn == 3  # team-a, team-b, console-made: one day
        assert models_drawn == 2
        await shot(page, "usage")

        # The configuration in force, secrets out, and a reload.
        await page.click("nav button[data-view=config]")
        await page.wait_for_selector("#config-text:has-text('\"models\"')")
        text = await page.locator("#config-text").inner_text()
        assert ADMIN_KEY not in text
        assert "sk-upstream-secret" not in text
        await page.click("#reload-button")
        await page.wait_for_selector("#reload-result:has-text('Reloaded')")
        await shot(page, "config")
    # No script error, no CSP violation; the one failed load is the wrong key's 401.
    assert problems == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
