"""The image's HEALTHCHECK: GET the health endpoint of whichever process this container runs, the
API's /healthz or a worker's /metrics, and exit 0 when it answers 200 within 3 s, else 1.
HEALTHCHECK_URL overrides the choice. Standard library only: it runs with the image's python3."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def url() -> str:
    if explicit := os.environ.get("HEALTHCHECK_URL"):
        return explicit
    command = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    if b"worker" in command:
        return f"http://127.0.0.1:{os.environ.get('DOCKGUARD_WORKER_METRICS_PORT', '9101')}/metrics"
    return f"http://127.0.0.1:{os.environ.get('DOCKGUARD_PORT', '8000')}/healthz"


def main() -> int:
    try:
        with urllib.request.urlopen(url(), timeout=3) as answer:  # noqa: S310 (loopback only)
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
