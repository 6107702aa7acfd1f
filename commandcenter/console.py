"""The operator console: one HTML page with plain JavaScript and CSS (no build step), and the vendored
Leaflet for the map. Everything it shows comes from the same HTTP API other clients use; its words
come from the message catalog siaga/locale/console.json, served here as /console/i18n.json."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .config import CCConfig

STATIC_DIR = Path(__file__).parent / "static"
# The catalog ships with the siaga package (siaga/i18n.py reads the same file for Python's words).
CATALOG = Path(str(resources.files("siaga") / "locale" / "console.json"))

router = APIRouter(include_in_schema=False)


def content_security_policy(cfg: CCConfig) -> str:
    """Scripts, styles and API calls from this origin only; images also from the map tile server.
    Leaflet positions its elements through the CSSOM, which 'self' styles allow."""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data: {cfg.console.tile_origin}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/console", status_code=307)


@router.get("/console")
async def console(request: Request) -> Response:
    cfg: CCConfig = request.app.state.config
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": content_security_policy(cfg),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            # The page itself holds no data (it fetches it), but an old copy must not hide a new version.
            "Cache-Control": "no-cache",
        },
    )


@router.get("/console/i18n.json")
async def console_catalog(request: Request) -> Response:
    """The console's message catalog, both languages: the page looks its words up itself, so that a
    person's switch of language needs no reload. Public, like the page: it holds words, no data."""
    body, etag = _catalog()
    # Revalidated each time, so that a new version's words come with its code; unchanged, 304.
    headers = {"Cache-Control": "no-cache", "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@functools.cache
def _catalog() -> tuple[bytes, str]:
    """The catalog file and its ETag: read once, it changes only with the installed version."""
    body = CATALOG.read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def mount_static(app: FastAPI) -> None:
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
