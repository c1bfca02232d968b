"""The systemd notify protocol (sd_notify), without libsystemd: a datagram to $NOTIFY_SOCKET.

With `Type=notify`, systemd waits for READY=1 before it considers the service started, and
with `WatchdogSec=` it restarts a service that stops sending WATCHDOG=1. Outside systemd
(no $NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one notification ("READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=..."). Returns
    whether there was a socket to send it to."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked for."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process
    return int(usec) / 1_000_000 / 2


async def watchdog(interval: float, environ: Mapping[str, str] = os.environ) -> None:
    """Ping systemd's watchdog while the event loop runs: a stuck loop stops the pings."""
    while True:
        notify("WATCHDOG=1", environ)
        await asyncio.sleep(interval)
