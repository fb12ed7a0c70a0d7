"""The watch link: `GET /watch/{name or key}` answers the page that joins that stream's swarm in
the browser, and `GET /web/{file}` the plain ES modules of streamer/web it loads. The page finds
the hub at its own origin; nothing here knows about streams beyond the shape of the path."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from streamer.core import names

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
KEY = re.compile(r"[0-9a-f]{64}")
FILE = re.compile(r"[a-z0-9][a-z0-9._-]*\.(?:js|css|html)")
TYPES = {"js": "text/javascript", "css": "text/css", "html": "text/html"}


def add_routes(app: web.Application) -> None:
    """Register the watch page and the web modules on the hub's application."""
    app.router.add_get("/watch/{target}", watch_page)
    app.router.add_get("/web/{file}", web_file)


async def watch_page(request: web.Request) -> web.StreamResponse:
    target = request.match_info["target"]
    if not (KEY.fullmatch(target) or names.is_valid_name(target)):
        raise web.HTTPNotFound(
            reason="open /watch/ followed by a stream name or its 64-hex-digit key"
        )
    return _file("watch.html", "no-cache")


async def web_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    if not FILE.fullmatch(name) or not (WEB_DIR / name).is_file():
        raise web.HTTPNotFound(reason=f"no such file /web/{name}")
    return _file(name, "no-cache")


_CACHE: dict[str, bytes] = {}  # the files are small and fixed for the life of the process


def _file(name: str, cache: str) -> web.Response:
    path = WEB_DIR / name
    kind = TYPES[path.suffix[1:]]
    if name not in _CACHE:
        _CACHE[name] = path.read_bytes()
    return web.Response(
        body=_CACHE[name],
        content_type=kind,
        charset="utf-8",
        headers={"Cache-Control": cache},
    )
