"""What differs between the model servers a replica may be: vLLM, llama.cpp's `llama-server`,
llama-cpp-python's server, TGI, SGLang, or any other OpenAI-compatible server.

Each kind has a `BackendProfile` of defaults, learnt from the real servers (docs/backends.md
says where each comes from); a replica's own settings override any of them.

| kind              | probe         | queue gauges        | stream usage | n > 1 | in flight |
|-------------------|---------------|---------------------|--------------|-------|-----------|
| openai-compatible | /health       | -                   | asked        | yes   | 512       |
| vllm              | /health       | vllm:num_requests_* | asked        | yes   | 512       |
| llama-cpp         | /health       | llamacpp:requests_* | asked        | no    | 64        |
| llama-cpp-python  | /openapi.json | -                   | never sent   | no    | 1         |
| tgi               | /health       | tgi_queue_size      | asked        | no    | 128       |
| sglang            | /health       | sglang:num_*_reqs   | asked        | yes   | 512       |

- llama-cpp-python has no /health, and its /v1/models waits behind a running generation
  (seconds), so it is probed on FastAPI's /openapi.json, which takes no model lock. It
  generates one request at a time and, with its default `interrupt_requests`, cuts the
  running stream when another request arrives: one in flight per replica.
- Every kind gets the gateway's own UUID as `X-Request-ID` by default: llama-cpp-python
  answers any other id with a bare 400, and vLLM needs ids unique among running requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BackendKind = Literal["openai-compatible", "vllm", "llama-cpp", "llama-cpp-python", "tgi", "sglang"]
RequestIdMode = Literal["uuid", "forward", "none"]


@dataclass(frozen=True, slots=True)
class BackendProfile:
    """A replica's behaviour as the gateway must treat it (kind defaults, then overrides)."""

    kind: BackendKind
    health_path: str = "/health"
    metrics_path: str | None = None  # Prometheus text with the queue gauges, if any
    # The queue gauges; vLLM's names unless the kind has its own (read only with a
    # metrics_path, which a replica may set for any kind).
    waiting_metric: str | None = "vllm:num_requests_waiting"  # requests queued in the server
    running_metric: str | None = "vllm:num_requests_running"  # requests being generated
    stream_usage: bool = True  # reports usage in a stream when asked (include_usage)
    supports_n: bool = True  # honours n > 1 (some servers silently return one choice)
    max_in_flight: int = 512
    request_id: RequestIdMode = "uuid"

    def queue_pattern(self) -> re.Pattern[bytes] | None:
        """Matches `<gauge>{labels} value` lines of the two queue gauges."""
        names = [name for name in (self.waiting_metric, self.running_metric) if name]
        if not names:
            return None
        alternatives = b"|".join(re.escape(name.encode()) for name in names)
        return re.compile(
            rb"^(" + alternatives + rb")(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE
        )


PROFILES: dict[str, BackendProfile] = {
    "openai-compatible": BackendProfile("openai-compatible"),
    "vllm": BackendProfile("vllm", metrics_path="/metrics"),
    "llama-cpp": BackendProfile(
        "llama-cpp",
        metrics_path="/metrics",
        waiting_metric="llamacpp:requests_deferred",
        running_metric="llamacpp:requests_processing",
        supports_n=False,
        max_in_flight=64,
    ),
    "llama-cpp-python": BackendProfile(
        "llama-cpp-python",
        health_path="/openapi.json",
        waiting_metric=None,
        running_metric=None,
        stream_usage=False,
        supports_n=False,
        max_in_flight=1,
    ),
    "tgi": BackendProfile(
        "tgi",
        metrics_path="/metrics",
        waiting_metric="tgi_queue_size",
        running_metric=None,
        supports_n=False,
        max_in_flight=128,
    ),
    "sglang": BackendProfile(
        "sglang",
        metrics_path="/metrics",
        waiting_metric="sglang:num_queue_reqs",
        running_metric="sglang:num_running_reqs",
    ),
}
