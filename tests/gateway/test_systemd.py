"""The sd_notify protocol, against a real unix datagram socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.process import systemd
from tests.gateway.harness import API_KEY, mock_service


def test_notify_sends_a_datagram_to_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
        assert server.recv(1024) == b"READY=1"


def test_notify_supports_abstract_sockets() -> None:
    name = f"citadel-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert server.recv(1024) == b"STOPPING=1"


def test_no_socket_no_notification() -> None:
    assert not systemd.notify("READY=1", {})


def test_watchdog_interval_is_half_of_watchdog_sec_for_this_process() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 1.0
    assert systemd.watchdog_interval({}) is None


async def test_gateway_process_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        async with mock_service(model="m") as mock:
            config = tmp_path / "gateway.yaml"
            config.write_text(
                f'listen: "127.0.0.1:0"\nauth: {{api_keys: ["{API_KEY}"]}}\n'
                f"models:\n  - name: m\n    backends:\n      - url: {mock.url}\n"
            )
            env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(config),
                env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                async with asyncio.timeout(30):
                    ready = await loop.sock_recv(server, 1024)
                    assert ready.startswith(b"READY=1\nSTATUS=serving on http://127.0.0.1:")
                    assert await loop.sock_recv(server, 1024) == b"WATCHDOG=1"
                    process.terminate()
                    while (message := await loop.sock_recv(server, 1024)) == b"WATCHDOG=1":
                        pass
                    assert message == b"STOPPING=1"
                    assert await process.wait() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        server.close()


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = Path(__file__).resolve().parents[2] / "ops" / "systemd" / "citadel-gateway.service"
    binary = Path(sys.executable).with_name("citadel-gateway")
    copy = tmp_path / "citadel-gateway.service"
    copy.write_text(
        unit.read_text().replace("/opt/citadel-gateway/.venv/bin/citadel-gateway", str(binary))
    )
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "citadel-gateway.service" not in result.stderr, result.stderr


def test_unit_file_reloads_with_sighup_and_runs_hardened() -> None:
    unit = Path(__file__).resolve().parents[2] / "ops" / "systemd" / "citadel-gateway.service"
    lines = {
        line.partition("=")[0]: line.partition("=")[2] for line in unit.read_text().split("\n")
    }
    assert lines["Type"] == "notify"
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert lines["Restart"] == "on-failure"
    assert lines["User"] == "citadel"
    for option in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert lines[option] == "yes"
    assert lines["ProtectSystem"] == "strict"
    assert int(lines["LimitNOFILE"]) >= 65536
