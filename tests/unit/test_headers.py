"""Security headers, CORS and the offline docs pages, through the ASGI app in process (no
lifespan: none of these answers needs Redis or the engine)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from dockguard.api import create_app
from dockguard.api.headers import API_CSP
from dockguard.settings import Settings

SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
ORIGIN = "https://ui.example"


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings())

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    async for client in _client(app):
        yield client


@pytest.fixture
async def cors_api() -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(create_app(Settings(cors_origins=ORIGIN))):
        yield client


def _assert_secured(response: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (name, response.headers)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/healthz", 200), ("/openapi.json", 200), ("/nowhere", 404), ("/boom", 500)],
)
async def test_api_answers_and_errors_carry_the_headers(
    api: httpx.AsyncClient, path: str, status: int
) -> None:
    response = await api.get(path)
    assert response.status_code == status
    _assert_secured(response)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-security-policy"] == API_CSP
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] in ("not_found", "internal_error")


async def test_swagger_ui_is_served_from_the_package_under_a_strict_csp(
    api: httpx.AsyncClient,
) -> None:
    page = await api.get("/docs")
    assert page.status_code == 200
    _assert_secured(page)
    csp = page.headers["content-security-policy"]
    assert "unsafe" not in csp and "http" not in csp and "*" not in csp
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    # the one inline script (Swagger UI's start) is allowed by its own hash, nothing else
    scripts = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/docs/static/") for link in links), links
    assert "'/openapi.json'" in page.text and '"validatorUrl": null' in page.text


async def test_redoc_needs_inline_styles_only(api: httpx.AsyncClient) -> None:
    page = await api.get("/redoc")
    assert page.status_code == 200
    _assert_secured(page)
    csp = page.headers["content-security-policy"]
    assert re.findall(r"'unsafe-[a-z-]+'", csp) == ["'unsafe-inline'"]
    assert "style-src 'self' 'unsafe-inline'" in csp and "http" not in csp
    assert "fonts.googleapis.com" not in page.text
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/docs/static/") for link in links), links


@pytest.mark.parametrize(
    ("asset", "media_type"),
    [
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("redoc.standalone.js", "javascript"),
        ("favicon.png", "image/png"),
    ],
)
async def test_assets_ship_in_the_package_and_are_revalidated(
    api: httpx.AsyncClient, asset: str, media_type: str
) -> None:
    response = await api.get(f"/docs/static/{asset}")
    assert response.status_code == 200, f"fastapi-offline no longer ships {asset}"
    assert media_type in response.headers["content-type"]
    assert response.headers["cache-control"] == "no-cache"
    _assert_secured(response)
    again = await api.get(
        f"/docs/static/{asset}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304


async def test_a_missing_asset_is_a_problem(api: httpx.AsyncClient) -> None:
    response = await api.get("/docs/static/nothing.js")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"
    assert response.headers["cache-control"] == "no-store"


async def test_cors_is_off_by_default(api: httpx.AsyncClient) -> None:
    preflight = await api.options(
        "/v1/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405
    assert preflight.headers["content-type"] == "application/problem+json"
    assert "access-control-allow-origin" not in preflight.headers
    simple = await api.get("/healthz", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_allows_the_configured_origins(cors_api: httpx.AsyncClient) -> None:
    preflight = await cors_api.options(
        "/v1/jobs",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key, x-request-id",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    _assert_secured(preflight)
    simple = await cors_api.get("/healthz", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert simple.headers["access-control-expose-headers"] == "Location, Retry-After, X-Request-ID"
    other = await cors_api.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_a_refused_preflight_is_a_problem(cors_api: httpx.AsyncClient) -> None:
    refused = await cors_api.options(
        "/v1/jobs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
    )
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["code"] == "request_invalid"
    assert problem["detail"] == "CORS preflight refused; not allowed: origin, method"
    assert "access-control-allow-origin" not in refused.headers
    _assert_secured(refused)


@pytest.mark.parametrize(
    "origins",
    ["https://ui.example/", "ui.example", "https://ui.example/app", "https://a.example,ftp://b"],
)
def test_an_origin_with_a_path_or_no_scheme_stops_the_start(origins: str) -> None:
    with pytest.raises(ValidationError, match="is not scheme://host"):
        Settings(cors_origins=origins)


def test_origins_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKGUARD_CORS_ORIGINS", " https://a.example , http://127.0.0.1:3000,")
    assert Settings().cors_origins == ["https://a.example", "http://127.0.0.1:3000"]
    assert Settings(cors_origins="").cors_origins == []


async def test_a_method_not_allowed_says_which_are(api: httpx.AsyncClient) -> None:
    """RFC 9110: a 405 carries `Allow` (schemathesis checks it, ST204)."""
    response = await api.request("TRACE", "/v1/jobs")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
