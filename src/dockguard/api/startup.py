"""Why the API did not start, told to the `dockguard serve` that started it: uvicorn logs the
failure of an app's startup and exits, but its supervisor of `serve --workers N` then stops
with status 0, as after a signal, and neither says why in one line. The parent names a private
directory in the environment its API processes inherit; the first process whose startup fails
writes its reason in a file there; the parent reads it, says it, and exits non-zero."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from dockguard.inherited_dir import inherited_dir

REPORT_ENV = "_DOCKGUARD_STARTUP_REPORT"
_REPORT = "failure"  # in the directory REPORT_ENV names
_MAX_CHARS = 500


@contextlib.contextmanager
def reporting() -> Iterator[Callable[[], str | None]]:
    """For `serve`: the block starts the API (in this process or in others); the function it is
    given answers why the API did not start, or None if none said."""
    with inherited_dir(REPORT_ENV, "dockguard-startup-") as directory:
        path = os.path.join(directory, _REPORT)

        def reason() -> str | None:
            try:
                with open(path, encoding="utf-8", errors="replace") as report:
                    return report.read() or None
            except FileNotFoundError:
                return None

        yield reason


def failed(exc: BaseException) -> None:
    """For the app's startup: it failed with `exc`. Only the first report is kept (the others
    of the same cause say the same)."""
    directory = os.environ.get(REPORT_ENV)
    if not directory:
        return
    path = os.path.join(directory, _REPORT)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())[:_MAX_CHARS]  # one line
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as report:
            report.write(text)
