"""One request's spans: a SERVER span for the request, with child spans for its steps
(authenticate, route, admit) and one CLIENT span per upstream try (its replica, its outcome,
why it was retried), time to first token as an event, the stream's end as another.

The client's W3C `traceparent`/`tracestate` is the parent; each try sends its own span's
`traceparent` to the model service, so a vLLM or llama.cpp trace joins the gateway's.
Attributes follow the OpenTelemetry semantic conventions for HTTP (`http.*`, `url.*`,
`server.*`) and for generative AI (`gen_ai.*`). Spans are started and ended explicitly (no
ambient context): a request's steps are awaited in one task, but its tries are not the only
spans alive at once across requests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class RequestTrace:
    __slots__ = (
        "_context", "_last_outcome", "_tracer", "_try", "_try_context", "recording", "span"
    )  # fmt: skip

    def __init__(
        self, tracer: Tracer, method: str, route: str, path: str, headers: Mapping[str, str]
    ) -> None:
        parent = _PROPAGATOR.extract(headers)  # none, or the client's
        self._tracer = tracer
        self.span = tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": path},
        )
        self._context = trace.set_span_in_context(self.span)
        # Not sampled: no child spans at all (the trace id still propagates, unsampled).
        self.recording = self.span.is_recording()
        self._try: Span | None = None
        self._try_context: Any = None
        self._last_outcome: str | None = None
        operation = _OPERATIONS.get(route)
        if operation is not None:
            self.span.set_attribute("gen_ai.operation.name", operation)

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A child span around a step of the request (an exception marks it an error)."""
        if not self.recording:
            yield
            return
        span = self._tracer.start_span(name, context=self._context)
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def try_started(self, backend: str, url: str, number: int) -> None:
        """A try's CLIENT span, from the lease to its release."""
        if not self.recording:
            return
        where = urlsplit(url)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "server.address": where.hostname or "",
            "citadel.backend": backend,
            "citadel.try": number,
        }
        if where.port is not None:
            attributes["server.port"] = where.port
        if self._last_outcome is not None:
            attributes["citadel.retry_reason"] = self._last_outcome
        self._try = self._tracer.start_span(
            f"upstream {backend}", context=self._context, kind=SpanKind.CLIENT,
            attributes=attributes,
        )  # fmt: skip
        self._try_context = trace.set_span_in_context(self._try)

    def upstream_headers(self) -> dict[str, str]:
        """`traceparent` (and `tracestate`) for the try in progress."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=self._try_context or self._context)
        return carrier

    def first_token(self) -> None:
        self.span.add_event("gen_ai.first_token")
        if self._try is not None:
            self._try.add_event("gen_ai.first_token")

    def try_ended(self, outcome: str, status: int | None, events: int, stream: bool) -> None:
        span = self._try
        if span is None:
            return
        self._try = self._try_context = None
        span.set_attribute("citadel.outcome", outcome)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if stream:
            span.add_event("stream.end", {"citadel.events": events})
        if outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, outcome))
        self._last_outcome = outcome
        span.end()

    def finish(
        self,
        status: int,
        model: str | None,
        served: str | None,
        usage: tuple[int, int] | None,
    ) -> None:
        span = self.span
        span.set_attribute("http.response.status_code", status)
        if model is not None:
            span.set_attribute("gen_ai.request.model", model)
        if served is not None:
            span.set_attribute("gen_ai.response.model", served)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage[0])
            span.set_attribute("gen_ai.usage.output_tokens", usage[1])
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
