"""Faults a mock model service can be told to show, for tests and demos that break it on
purpose. Set over HTTP (`POST /mock/fault`) or directly on the in-process state."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FaultMode = Literal[
    "none",
    "error",  # answer with `status` and a vLLM-style error body (`message`, or a traceback)
    "hang",  # accept the request and never answer
    "reset",  # drop the connection without answering
    "cut",  # stream `after_chunks` chunks, then drop the connection (no [DONE])
    "stream_error",  # stream `after_chunks` chunks, then an error event inside the 200 stream
    "slow",  # everything `slow_factor` times slower
    "malformed",  # a 200 whose body is not JSON
    "unhealthy",  # /health answers 503; everything else works
    "no_done",  # stream the whole answer and end the body cleanly, without [DONE]
]


# What a failing vLLM puts in its error messages: the gateway must never relay it.
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/site-packages/vllm/engine/async_llm_engine.py", line 512, in step\n'
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
)


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: FaultMode = "none"
    status: int = Field(500, ge=400, le=599)
    after_chunks: int = Field(2, ge=0)
    message: str | None = Field(None, description="the error's message, for mode error")
    slow_factor: float = Field(10.0, ge=1)
    count: int | None = Field(
        None, ge=1, description="apply to the next N requests only, then back to none"
    )


NO_FAULT = Fault()
