"""`workers: N`: N gateway processes on one port, under a parent that keeps them running.

Each worker is a whole gateway (its own actor tree, pools and probes) bound with SO_REUSEPORT,
so the kernel spreads connections over them. The parent:

- reserves the port first (a bound, never-listening SO_REUSEPORT socket), so that `:0`
  resolves to one port every worker shares, and a restarted worker binds the same one;
- gives the workers its own notify socket: it tells systemd READY=1 once every worker has
  said READY=1, and STOPPING=1 when it stops;
- restarts a worker that exits unexpectedly, with exponential backoff that resets once a
  worker has run for a minute;
- passes SIGHUP on to every worker (each reloads the file), and on SIGTERM/SIGINT stops them
  all, each with its shutdown grace period, and exits 0;
- owns the Prometheus multiprocess directory: created empty, given to the workers, a dead
  worker's live gauges dropped, removed at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from prometheus_client.multiprocess import mark_process_dead

from gateway.http.metrics import MULTIPROC_ENV
from gateway.process import systemd
from gateway.process.config import GatewayConfig

log = structlog.get_logger("gateway.process.workers")

PORT_ENV = "CITADEL_LISTEN_PORT"  # the port the parent reserved, for its workers
WORKER_ENV = "CITADEL_WORKER"  # the worker's index, for its logs
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 60.0
KILL_MARGIN = 10.0  # seconds after a worker's grace period before it is killed


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT and never listening: it holds the port for the
    workers (connections only go to listening sockets)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class WorkerParent:
    def __init__(self, config: GatewayConfig, config_path: str) -> None:
        self._config = config
        self._config_path = config_path
        self._workers = [Worker(index) for index in range(config.workers)]
        self._stopping = asyncio.Event()
        self._dir = Path(tempfile.mkdtemp(prefix="citadel-gateway-"))
        self._metrics_dir = self._dir / "metrics"
        self._notify_path = self._dir / "notify.sock"
        self.port = 0

    async def run(self) -> int:
        self._metrics_dir.mkdir()
        reserved = reserve_port(self._config.host, self._config.port)
        self.port = reserved.getsockname()[1]
        loop = asyncio.get_running_loop()
        notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        notifications.bind(str(self._notify_path))
        loop.add_reader(notifications.fileno(), self._receive, notifications)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        log.info("workers_starting", workers=len(self._workers), port=self.port)
        keepers = [asyncio.ensure_future(self._keep(worker)) for worker in self._workers]
        announcer = asyncio.ensure_future(self._announce_ready())
        pinger = None
        if interval := systemd.watchdog_interval():
            pinger = asyncio.ensure_future(systemd.watchdog(interval))
        try:
            await self._stopping.wait()
            log.info("workers_stopping")
            systemd.notify("STOPPING=1")
            self._forward(signal.SIGTERM)
            await asyncio.gather(*keepers)
        finally:
            for task in (announcer, pinger, *keepers):
                if task is not None:
                    task.cancel()
            loop.remove_reader(notifications.fileno())
            notifications.close()
            reserved.close()
            shutil.rmtree(self._dir, ignore_errors=True)
        log.info("workers_stopped")
        return 0

    async def _announce_ready(self) -> None:
        await asyncio.gather(*(worker.ready.wait() for worker in self._workers))
        host = self._config.host
        log.info("workers_ready", workers=len(self._workers), url=f"http://{host}:{self.port}")
        systemd.notify(f"READY=1\nSTATUS={len(self._workers)} workers on port {self.port}")

    def _receive(self, notifications: socket.socket) -> None:
        """The workers' sd_notify datagrams (READY=1 with MAINPID=<pid>)."""
        while True:
            try:
                data = notifications.recv(4096)
            except BlockingIOError:
                return
            self.on_notification(data.decode(errors="replace"))

    def on_notification(self, message: str) -> None:
        fields = dict(line.partition("=")[::2] for line in message.splitlines())
        pid = fields.get("MAINPID") or ""
        for worker in self._workers:
            process = worker.process
            if process is not None and str(process.pid) == pid and fields.get("READY") == "1":
                log.info("worker_ready", worker=worker.index, pid=process.pid)
                worker.ready.set()

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)

    def _environment(self, worker: Worker) -> dict[str, str]:
        env = dict(os.environ)
        env[MULTIPROC_ENV] = str(self._metrics_dir)
        env["NOTIFY_SOCKET"] = str(self._notify_path)
        env[PORT_ENV] = str(self.port)
        env[WORKER_ENV] = str(worker.index)
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):  # the parent pings systemd
            env.pop(name, None)
        return env

    async def _keep(self, worker: Worker) -> None:
        """Run one worker until the parent stops, restarting it when it dies."""
        while not self._stopping.is_set():
            command = [sys.executable, "-m", "gateway", "serve", "--worker"]
            command += ["--config", self._config_path]
            process = await asyncio.create_subprocess_exec(*command, env=self._environment(worker))
            worker.process, worker.started = process, time.monotonic()
            log.info("worker_started", worker=worker.index, pid=process.pid)
            stop = asyncio.ensure_future(self._stopping.wait())
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({stop, exited}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not exited.done():  # stopping: the worker got SIGTERM from _forward
                await self._wait_or_kill(process)
            mark_process_dead(process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                log.info("worker_stopped", worker=worker.index, exit_code=process.returncode)
                return
            ran = time.monotonic() - worker.started
            worker.failures = 1 if ran >= BACKOFF_RESET_AFTER else worker.failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (worker.failures - 1))
            log.error(
                "worker_died",
                worker=worker.index,
                pid=process.pid,
                exit_code=process.returncode,
                ran_s=round(ran, 1),
                restart_in_s=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _wait_or_kill(self, process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(process.wait(), self._config.shutdown_grace + KILL_MARGIN)
        except TimeoutError:
            log.error("worker_killed", pid=process.pid, reason="did not stop within its grace")
            process.kill()
            await process.wait()


async def run_workers(config: GatewayConfig, config_path: str) -> int:
    return await WorkerParent(config, config_path).run()
