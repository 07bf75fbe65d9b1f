"""Why the API did not start, told to the `dockguard serve` that started it: uvicorn logs the
failure of an app's startup and exits, but its supervisor of `serve --workers N` says nothing of
it in its exit status, and neither says why in one line. The parent names a private directory
in the environment its API processes inherit; a process whose startup fails writes its reason
in a file there (the latest failure wins); the parent reads it and says it."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator

from dockguard.inherited_dir import inherited_dir

log = logging.getLogger(__name__)

REPORT_ENV = "_DOCKGUARD_STARTUP_REPORT"
_REPORT = "failure"  # in the directory REPORT_ENV names
_MAX_CHARS = 500


@contextlib.contextmanager
def reporting() -> Iterator[Callable[[], str | None]]:
    """For `serve`: the block starts the API (in this process or in others); the function it is
    given answers why the API last failed to start, or None if none said. With no temporary
    directory to write in, nothing is reported (the log still says why)."""
    with contextlib.ExitStack() as stack:
        path = None
        try:
            path = os.path.join(
                stack.enter_context(inherited_dir(REPORT_ENV, "dockguard-startup-")), _REPORT
            )
        except OSError as exc:
            log.warning("no startup report: no temporary directory", extra={"why": repr(exc)})

        def reason() -> str | None:
            if path is None:
                return None
            try:
                with open(path, encoding="utf-8", errors="replace") as report:
                    return report.read() or None
            except FileNotFoundError:
                return None

        yield reason


def failed(exc: BaseException) -> None:
    """For the app's startup: it failed with `exc` (written whole or not at all: a new file
    renamed over the last one)."""
    directory = os.environ.get(REPORT_ENV)
    if not directory:
        return
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())[:_MAX_CHARS]  # one line
    with contextlib.suppress(OSError):
        fd, written = tempfile.mkstemp(dir=directory, prefix=".failure-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as report:
                report.write(text)
            os.replace(written, os.path.join(directory, _REPORT))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(written)
