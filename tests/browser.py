"""A page loaded in headless Chromium (Debian's `chromium`), driven through the DevTools protocol
over `--remote-debugging-pipe`: NUL-terminated JSON on file descriptors 3 (to the browser) and 4
(from it), so no port, no websocket library and no browser download.

`load(url, ready=JS)` opens the page, waits until the `ready` expression is true and no request
is in flight, and returns what a reviewer asks about: the DOM, every URL the page requested (and
which of them the browser blocked), the Content-Security-Policy violations and script errors it
saw, and a PNG screenshot. Blocking:
call it from a thread when the server under test runs on the caller's event loop."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

# Recorded before any of the page's own scripts run.
_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""
_QUIET = [
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
]


class BrowserError(Exception):
    """Chromium is missing, exited, or did not answer in time."""


@dataclass
class Page:
    dom: str
    requests: list[str]  # every URL the page asked for, in order (blocked ones too)
    blocked: list[str]  # those the browser refused to fetch
    csp_violations: list[str]
    script_errors: list[str]
    screenshot_png: bytes


@dataclass
class _Session:
    """The browser's side of the pipe pair, and the events read so far."""

    proc: subprocess.Popen[bytes]
    to_browser: int
    from_browser: int
    events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytes = b""
    _next_id: int = 0

    def call(
        self, method: str, session: str | None = None, timeout_s: float = 10, **params: Any
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result

    def _read(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from chromium to {waiting_for}")
            readable, _, _ = select.select([self.from_browser], [], [], left)
            if readable:
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise BrowserError(f"chromium exited (code {self.proc.poll()})")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise BrowserError(
            "chromium is not installed: `apt-get install -y chromium` (scripts/test.sh does)"
        )
    return binary


def load(
    url: str, *, ready: str, timeout_s: float = 30, window: tuple[int, int] = (1280, 900)
) -> Page:
    """The page at `url` once the JavaScript expression `ready` holds and its network is idle."""
    with tempfile.TemporaryDirectory(prefix="dockguard-chromium-") as profile:
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        args = [
            chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
            "--remote-debugging-pipe", f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}", "--hide-scrollbars", *_QUIET, "about:blank",
        ]  # fmt: skip
        # The pipe must be the browser's fds 3 and 4: hand them over as stdin and stdout and let
        # the shell move them (a preexec_fn is unsafe in the thread this runs in).
        proc = subprocess.Popen(
            ["sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", *args],
            stdin=commands_read,
            stdout=replies_write,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderers and helpers too end with the group below
        )
        os.close(commands_read)
        os.close(replies_write)
        browser = _Session(proc, commands_write, replies_read)
        try:
            return _visit(browser, url, ready, time.monotonic() + timeout_s)
        finally:
            os.close(commands_write)
            os.close(replies_read)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _visit(browser: _Session, url: str, ready: str, deadline: float) -> Page:
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Network", "Page", "Runtime"):
        browser.call(f"{domain}.enable", session)
    browser.call("Page.addScriptToEvaluateOnNewDocument", session, source=_WATCH_CSP)
    browser.call("Page.navigate", session, url=url)

    def evaluate(expression: str) -> Any:
        reply = browser.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return reply["result"].get("value")

    while not (evaluate(f"Boolean({ready})") and _idle(browser.events)):
        if time.monotonic() > deadline:
            requests = ", ".join(_requested(browser.events)) or "none"
            raise BrowserError(f"{url}: `{ready}` still false (requests: {requests})")
        time.sleep(0.05)  # a poll of a condition in another process: nothing to await
    shot = browser.call("Page.captureScreenshot", session, format="png")["data"]
    return Page(
        dom=evaluate("document.documentElement.outerHTML"),
        requests=_requested(browser.events),
        blocked=_blocked(browser.events),
        csp_violations=evaluate("window.__cspViolations"),
        script_errors=[
            event["params"]["exceptionDetails"].get("text", "")
            + " "
            + str(event["params"]["exceptionDetails"].get("exception", {}).get("description", ""))
            for event in browser.events
            if event.get("method") == "Runtime.exceptionThrown"
        ],
        screenshot_png=base64.b64decode(shot),
    )


def _requested(events: list[dict[str, Any]]) -> list[str]:
    return [
        event["params"]["request"]["url"]
        for event in events
        if event.get("method") == "Network.requestWillBeSent"
    ]


def _blocked(events: list[dict[str, Any]]) -> list[str]:
    """The URLs the browser refused to fetch (CSP, mixed content…) before anything was sent."""
    urls = {
        e["params"]["requestId"]: e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    }
    return [
        urls.get(e["params"]["requestId"], "?")
        for e in events
        if e.get("method") == "Network.loadingFailed" and e["params"].get("blockedReason")
    ]


def _idle(events: list[dict[str, Any]]) -> bool:
    """Every HTTP request the page started has finished or failed (data: and blob: URLs are read
    from memory, and a worker's script loads in a target of its own)."""
    started = {
        e["params"]["requestId"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
        and e["params"]["request"]["url"].startswith(("http:", "https:"))
    }
    ended = {
        e["params"]["requestId"]
        for e in events
        if e.get("method") in ("Network.loadingFinished", "Network.loadingFailed")
    }
    return started <= ended
