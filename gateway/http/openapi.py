"""The gateway's API as an OpenAPI 3.1 document, served at GET /openapi.json.

Request bodies of the model endpoints are the JSON Schemas of the pydantic models that
validate them (gateway.http.schemas), so the document and the validation cannot drift apart;
tests/gateway/test_openapi.py checks that every route the app serves is here and the reverse,
and runs schemathesis against a live gateway from this document.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.http.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

REF = "#/components/schemas/{model}"
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_OBJECT = {"type": "object"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    ok: dict[str, Any] | None = None,
    security: str | None = "bearer",
    parameters: list[dict[str, Any]] | None = None,
    status: str = "200",
) -> dict[str, Any]:
    content = ok if ok is not None else _json(_OBJECT)
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: {"description": "the answer", "content": content},
            "default": {"description": "an OpenAI-shaped error", "content": _json(_ERROR)},
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": _json({"$ref": REF.format(model=body.__name__)}),
        }
    if security is not None:
        operation["security"] = [{security: []}]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, kind: str = "number") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


def _stream_or_json() -> dict[str, Any]:
    return {**_json(_OBJECT), "text/event-stream": {"schema": {"type": "string"}}}


def document() -> dict[str, Any]:
    models = (ChatCompletionRequest, CompletionRequest, EmbeddingRequest)
    schemas: dict[str, Any] = {"Error": _ERROR}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    admin = "admin"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "citadel-gateway",
            "version": "1",
            "description": "An OpenAI-compatible gateway: the OpenAI endpoints it serves, "
            "its health checks and its admin API.",
        },
        "paths": {
            "/v1/chat/completions": {
                "post": _operation(
                    "Create a chat completion", body=ChatCompletionRequest, ok=_stream_or_json()
                )
            },
            "/v1/completions": {
                "post": _operation(
                    "Create a text completion", body=CompletionRequest, ok=_stream_or_json()
                )
            },
            "/v1/embeddings": {"post": _operation("Create embeddings", body=EmbeddingRequest)},
            "/v1/models": {"get": _operation("The models this key may use")},
            "/v1/models/{model}": {
                "get": _operation("One model", parameters=[_path_parameter("model")])
            },
            "/health/live": {"get": _operation("Liveness", security=None)},
            "/health/ready": {"get": _operation("Readiness", security=None)},
            "/metrics": {
                "get": _operation(
                    "Prometheus metrics (from allowed networks)",
                    security=None,
                    ok={"text/plain": {"schema": {"type": "string"}}},
                )
            },
            "/openapi.json": {"get": _operation("This document", security=None)},
            "/admin/actors": {"get": _operation("The live actor tree", security=admin)},
            "/admin/actors/{path}/restart": {
                "post": _operation(
                    "Restart an actor", security=admin, parameters=[_path_parameter("path")]
                )
            },
            "/admin/backends": {"get": _operation("Every replica's state", security=admin)},
            "/admin/guardrails": {
                "get": _operation("The guardrail policies in force", security=admin)
            },
            "/admin/cache": {
                "get": _operation("The response cache and its policies", security=admin)
            },
            "/admin/reload": {"post": _operation("Reload the configuration", security=admin)},
            "/admin/config": {
                "get": _operation("The configuration in force, secrets out", security=admin)
            },
            "/admin/": {
                "get": _operation(
                    "The admin console (a page; it signs in with an admin key)",
                    security=None,
                    ok={"text/html": {"schema": {"type": "string"}}},
                )
            },
            "/admin/console/{name}": {
                "get": _operation(
                    "The console's script and style sheet",
                    security=None,
                    ok={
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                    },
                    parameters=[
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["console.js", "console.css"]},
                        }
                    ],
                )
            },
            "/admin/keys": {
                "get": _operation("Every key (never a secret)", security=admin),
                "post": _operation("Create a key", security=admin, status="201"),
            },
            "/admin/keys/{key_id}": {
                "delete": _operation(
                    "Revoke a key", security=admin, parameters=[_path_parameter("key_id")]
                )
            },
            "/admin/keys/{key_id}/revoke": {
                "post": _operation(
                    "Revoke a key", security=admin, parameters=[_path_parameter("key_id")]
                )
            },
            "/admin/keys/{key_id}/rotate": {
                "post": _operation(
                    "Rotate a key", security=admin, parameters=[_path_parameter("key_id")]
                )
            },
            "/admin/usage": {
                "get": _operation(
                    "Usage from the ledger",
                    security=admin,
                    parameters=[
                        _query("by", "string"),
                        _query("since"),
                        _query("until"),
                        _query("hours"),
                    ],
                )
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
                "admin": {"type": "http", "scheme": "bearer", "description": "an admin key"},
            },
        },
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve)
