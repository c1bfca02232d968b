"""OpenTelemetry traces of requests (issue #16): settings, the exporter set-up (provider), and
a request's spans (request)."""
