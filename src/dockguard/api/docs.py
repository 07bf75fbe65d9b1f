"""Swagger UI at `/docs` and ReDoc at `/redoc`, built only from files served by this process.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (a blank page offline, and a third party
running code on the docs' origin). Here the assets come from the `fastapi-offline` wheel, served
under `/docs/static`, and each page carries a Content-Security-Policy that allows this origin
alone: its one inline script (Swagger UI's start) is allowed by its hash, never 'unsafe-inline'.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC_PATH = "/docs/static"
# The asset files of fastapi-offline's wheel (pinned below 2 in pyproject.toml: their names are
# not a promised API, and tests/unit/test_headers.py fails if one goes missing).
ASSETS_PACKAGE = ("fastapi_offline", "static")
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "redoc.standalone.js",
    "favicon.png",
)

# Swagger UI sets styles through the CSSOM only and draws its icons as data: SVGs.
SWAGGER_CSP = (
    "default-src 'none'; script-src 'self' {scripts}; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# ReDoc (styled-components) writes <style> elements at run time, which no hash can cover, and
# runs its search index in a worker made from a blob: URL.
REDOC_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def install(app: FastAPI) -> None:
    """Serve the pages and their assets (the app is made with `docs_url=None, redoc_url=None`)."""
    app.mount(STATIC_PATH, _Assets(StaticFiles(packages=[ASSETS_PACKAGE])), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PATH}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{STATIC_PATH}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{STATIC_PATH}/{FAVICON}",
            # No validator badge: it would send the schema to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = SWAGGER_CSP.format(
            scripts=" ".join(_hashes(bytes(page.body).decode()))
        )
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_PATH}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{STATIC_PATH}/{FAVICON}",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = REDOC_CSP
        return page


def _hashes(html: str) -> list[str]:
    """CSP sources allowing exactly the page's inline scripts."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    ]


class _Assets:
    """The static files, revalidated by the browser on each use (their ETag makes that a 304)
    rather than never stored: they change only with the package."""

    def __init__(self, files: StaticFiles) -> None:
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_cacheable(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"cache-control", b"no-cache")]
            await send(message)

        await self.files(scope, receive, send_cacheable)
