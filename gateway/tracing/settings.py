"""`tracing:` in the YAML. Off by default."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TracingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces",
        description="the OTLP/HTTP traces endpoint (an OpenTelemetry Collector, Jaeger, Tempo)",
    )
    protocol: Literal["http/protobuf"] = "http/protobuf"
    headers: dict[str, str] = Field(default_factory=dict, description="sent with each export")
    sampling_ratio: float = Field(
        1.0, ge=0, le=1, description="of the traces the gateway starts (a client's sampled "
        "flag is honoured)",
    )  # fmt: skip
    service_name: str = "citadel-gateway"
    export_interval: float = Field(
        1.0, gt=0, le=60, description="seconds spans wait to be exported in a batch"
    )
    export_timeout: float = Field(10.0, gt=0, le=60, description="seconds an export may take")
    max_queue: int = Field(
        8192, ge=16, description="spans waiting for export; beyond, new ones are dropped"
    )
