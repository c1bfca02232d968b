"""The admin console: a static page under /admin/ for people, talking only to the admin API.

No build step, no third-party assets: three files of this package, served with a strict
Content-Security-Policy (scripts, styles and connections to this origin only; no inline
script, no frames, no forms posting elsewhere). The admin key is kept in the browser's
session storage and sent in the Authorization header of each API call: no cookie is ever
set, so a page elsewhere cannot make the browser act with it (no CSRF to defend against).
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_FILES = {
    "": ("index.html", "text/html"),
    "console.js": ("console.js", "text/javascript"),
    "console.css": ("console.css", "text/css"),
}
CONSOLE = web.AppKey("citadel_console", dict)


def add_routes(app: web.Application) -> None:
    package = files(__name__)
    app[CONSOLE] = {
        name: ((package / source).read_bytes(), kind) for name, (source, kind) in _FILES.items()
    }
    app.router.add_get("/admin/", serve)
    app.router.add_get("/admin/console/{name}", serve)


async def serve(request: web.Request) -> web.Response:
    found = request.app[CONSOLE].get(request.match_info.get("name", ""))
    if found is None:
        raise web.HTTPNotFound()
    body, kind = found
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)
