"""The tracer: an OpenTelemetry SDK provider exporting OTLP over HTTP in batches, from the SDK's
own worker thread (never on the request path). An unreachable collector costs a failed export
every `export_interval`, counted in `citadel_trace_exports_total{result}`; spans beyond the
queue are dropped, not waited for."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, Counter

from gateway.tracing.settings import TracingSettings


class CountingExporter(SpanExporter):
    """The OTLP exporter, each export's result counted."""

    def __init__(self, exporter: SpanExporter, exports: Counter) -> None:
        self._exporter = exporter
        self._exports = exports

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:  # noqa: BLE001 - a collector's failure is counted, never raised
            result = SpanExportResult.FAILURE
        self._exports.labels("ok" if result is SpanExportResult.SUCCESS else "failed").inc()
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class Tracing:
    """The gateway's tracer and what it takes to stop it (flushing what is queued)."""

    def __init__(self, settings: TracingSettings, registry: CollectorRegistry) -> None:
        exports = Counter(
            "citadel_trace_exports_total",
            "Batches of spans exported to the OTLP endpoint, by result",
            ["result"],
            registry=registry,
        )
        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint,
            headers=dict(settings.headers),
            timeout=settings.export_timeout,
        )
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sampling_ratio)),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                CountingExporter(exporter, exports),
                max_queue_size=settings.max_queue,
                schedule_delay_millis=settings.export_interval * 1000,
                export_timeout_millis=settings.export_timeout * 1000,
            )
        )
        self.tracer: Tracer = self.provider.get_tracer("citadel-gateway")

    def close(self) -> None:
        """Export what is queued (bounded by the export timeout), then stop."""
        self.provider.shutdown()
