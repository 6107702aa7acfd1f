"""The operator console: one HTML page with plain JavaScript and CSS (no build step), and the vendored
Leaflet for the map. Everything it shows comes from the same HTTP API other clients use."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .config import CCConfig

STATIC_DIR = Path(__file__).parent / "static"

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


def mount_static(app: FastAPI) -> None:
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
