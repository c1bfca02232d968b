"""Real model servers as processes on free ports: llama-cpp-python's server and llama.cpp's
llama-server, both serving SmolLM2-135M-Instruct, installed by ops/real_servers/install.

Each runs on one thread (four of them share this machine's two cores) and logs to a file
that a failing test names. A port found free can be taken before the server binds it: the
start is retried on another port when the process dies before it is ready.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

INSTALL_DIR_ENV = "CITADEL_REAL_SERVERS"
DEFAULT_INSTALL_DIR = Path.home() / ".cache" / "citadel-gateway" / "real-servers"
SERVED_NAME = "smol"  # the name both servers answer to (the gateway's public names differ)
CONTEXT = 2048  # tokens of context per request, on both servers
START_TIMEOUT = 120.0  # seconds for a server to load the model and answer its probe


@dataclass(frozen=True)
class Installed:
    python: str
    llama_server: str
    model: str

    @staticmethod
    def find() -> Installed:
        """The installed servers, or an error that says how to install them."""
        home = Path(os.environ.get(INSTALL_DIR_ENV) or DEFAULT_INSTALL_DIR)
        manifest = home / "servers.json"
        if not manifest.exists():
            raise RuntimeError(
                f"the real model servers are not installed ({manifest} is missing): run "
                "`make real-servers` (or `make test-real`, which installs them first)"
            )
        paths = json.loads(manifest.read_text())
        return Installed(paths["python"], paths["llama_server"], paths["model"])


@dataclass
class RealServer:
    kind: str  # the gateway's backend kind: "llama-cpp-python" or "llama-cpp"
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """Die as a crash would: SIGKILL, no goodbye to open connections."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str) -> float:
        """A gauge from llama-server's /metrics (started with --metrics)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _command(installed: Installed, kind: str, port: int) -> list[str]:
    if kind == "llama-cpp-python":
        return [
            installed.python, "-m", "llama_cpp.server",
            "--model", installed.model, "--model_alias", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(CONTEXT), "--n_threads", "1", "--n_threads_batch", "1",
        ]  # fmt: skip
    return [
        installed.llama_server,
        "-m", installed.model, "--alias", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "-c", str(2 * CONTEXT), "--parallel", "2", "--metrics", "-t", "1",
    ]  # fmt: skip


def _ready(server: RealServer) -> bool:
    path = "/openapi.json" if server.kind == "llama-cpp-python" else "/health"
    try:
        with urllib.request.urlopen(server.url + path, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(installed: Installed, kind: str, log_dir: Path, name: str) -> RealServer:
    """Start one server and wait until it answers its probe."""
    return _launch(kind, lambda port: _command(installed, kind, port), log_dir / f"{name}.log")


def _launch(kind: str, command: Callable[[int], list[str]], log: Path) -> RealServer:
    """Run `command(port)` on a free port until it answers its probe; another port if the
    one found free was taken before the server bound it."""
    for _ in range(3):
        port = _free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT)
        server = RealServer(kind, process, port, log)
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if _ready(server):
                return server
            time.sleep(0.2)
        server.stop()
        if "address already in use" not in log.read_text(errors="replace").lower():
            break
    raise RuntimeError(f"{kind} did not start; its log: {log}\n{log.read_text()[-2000:]}")


EMBEDDINGS_DIR_ENV = "CITADEL_EMBEDDINGS"
DEFAULT_EMBEDDINGS_DIR = Path.home() / ".cache" / "citadel-gateway" / "embedding-server"
EMBEDDING_NAME = "minilm"  # the name the embedding server answers to
EMBEDDING_SERVER = Path(__file__).with_name("embedding_server.py")


def embeddings_python() -> str:
    """The embedding venv's python (ops/real_servers/install_embeddings), or an error that
    says how to install it."""
    home = Path(os.environ.get(EMBEDDINGS_DIR_ENV) or DEFAULT_EMBEDDINGS_DIR)
    manifest = home / "embeddings.json"
    if not manifest.exists():
        raise RuntimeError(
            f"the real embedding server is not installed ({manifest} is missing): run "
            "`make real-servers` (or `make test-real`, which installs it first)"
        )
    return str(json.loads(manifest.read_text())["python"])


def start_embeddings(python: str, log_dir: Path) -> RealServer:
    """all-MiniLM-L6-v2 behind /v1/embeddings, once it answers /health."""
    script = str(EMBEDDING_SERVER)
    return _launch(
        "openai-compatible",
        lambda port: [python, script, "--port", str(port), "--name", EMBEDDING_NAME],
        log_dir / "embeddings.log",
    )
