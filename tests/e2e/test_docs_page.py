"""The API docs in a real browser (Debian's headless Chromium, see tests/browser.py): they render
from the server under test alone, under the Content-Security-Policy they are served with.

To refresh the README's screenshot: `DOCS_SCREENSHOT=docs/swagger-ui.png bash scripts/test.sh
tests/e2e/test_docs_page.py`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import browser
from tests.e2e.conftest import Dockguard

SUMMARY = "Submit a Dockerfile"  # the submit operation's summary in the OpenAPI schema
RENDERED = f"document.documentElement.textContent.includes({SUMMARY!r})"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Fails, never skips, without a browser: the docs would then go unchecked."""
    try:
        return browser.chromium()
    except browser.BrowserError as missing:
        pytest.fail(str(missing))


def _server(dockguard: Dockguard) -> str:
    netloc = urlsplit(str(dockguard.client.base_url)).netloc
    assert netloc.startswith("127.0.0.1:"), netloc
    return netloc


async def test_swagger_ui_renders_with_every_request_to_the_server(
    dockguard: Dockguard, chromium: str
) -> None:
    server = _server(dockguard)
    page = await asyncio.to_thread(browser.load, f"http://{server}/docs", ready=RENDERED)

    assert SUMMARY in page.dom
    assert page.requests, "the browser reported no request at all"
    elsewhere = [url for url in page.requests if urlsplit(url).netloc != server]
    assert elsewhere == [], f"the docs page asked another host: {elsewhere}"
    assert {urlsplit(url).path for url in page.requests} >= {
        "/docs",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
        "/openapi.json",
    }
    assert page.blocked == [] and page.csp_violations == [], page.csp_violations
    assert page.script_errors == []
    assert page.screenshot_png.startswith(b"\x89PNG\r\n\x1a\n")
    if target := os.environ.get("DOCS_SCREENSHOT"):
        Path(target).write_bytes(page.screenshot_png)


async def test_redoc_renders_and_its_only_outside_link_is_blocked(
    dockguard: Dockguard, chromium: str
) -> None:
    """ReDoc always draws Redocly's logo from their CDN; the page's CSP stops that image before
    a request is sent, and nothing else leaves the page."""
    server = _server(dockguard)
    page = await asyncio.to_thread(browser.load, f"http://{server}/redoc", ready=RENDERED)

    assert SUMMARY in page.dom
    in_memory = ("data", "blob")  # inline images, and the search worker made from a blob
    sent = [url for url in page.requests if url not in page.blocked]
    elsewhere = [
        url
        for url in sent
        if urlsplit(url).scheme not in in_memory and urlsplit(url).netloc != server
    ]
    assert elsewhere == [], f"ReDoc asked another host: {elsewhere}"
    assert "/docs/static/redoc.standalone.js" in {urlsplit(url).path for url in sent}
    assert all(urlsplit(url).netloc == "cdn.redoc.ly" for url in page.blocked), page.blocked
    assert page.csp_violations == [f"img-src blocked {url}" for url in page.blocked]
    assert page.script_errors == []


# One step per poll: open the submit operation, "Try it out", "Execute", then wait for the answer.
_TRY_IT_OUT = """(() => {
  const done = (window.__steps ??= new Set());
  for (const selector of [".opblock-summary-control", ".try-out__btn", ".execute"]) {
    const button = document.querySelector(selector);
    if (!done.has(selector)) { if (button) { button.click(); done.add(selector); } return false; }
  }
  return document.querySelector(".live-responses-table .response-col_status") !== null;
})()"""


async def test_try_it_out_reaches_the_api_under_the_pages_policy(
    dockguard: Dockguard, chromium: str
) -> None:
    """Swagger UI's example body (`{"dockerfile": "string"}`) is no Dockerfile: the answer is a
    problem document (and no job is made)."""
    server = _server(dockguard)
    page = await asyncio.to_thread(browser.load, f"http://{server}/docs", ready=_TRY_IT_OUT)

    assert f"http://{server}/v1/jobs" in page.requests
    elsewhere = [url for url in page.requests if urlsplit(url).scheme != "data"]
    assert [url for url in elsewhere if urlsplit(url).netloc != server] == []
    assert "urn:dockguard:error:" in page.dom  # the API's answer, shown by Swagger UI
    assert page.blocked == [] and page.csp_violations == [] and page.script_errors == []
