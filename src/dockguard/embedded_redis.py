"""A private `redis-server` child process for `dockguard serve` when no Redis URL is configured:
a unix socket in a fresh 0700 directory, no persistence, stopped with the service."""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    pass


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Start redis-server from PATH; yield its `unix://` URL; stop it and remove its files."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise EmbeddedRedisError(
            "DOCKGUARD_REDIS_URL is not set and no redis-server is on PATH to start a private one"
        )
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-redis-"))
    sock = workdir / "redis.sock"
    proc = subprocess.Popen(
        [
            binary,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--loglevel", "warning",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    try:
        _wait_ready(proc, sock)
        url = f"unix://{sock}"
        log.info("started a private redis-server (DOCKGUARD_REDIS_URL unset)", extra={"url": url})
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        log.info("stopped the private redis-server")


def _die_with_parent() -> None:
    """In the child: ask the kernel to SIGTERM it if dockguard dies without stopping it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedRedisError(f"redis-server exited at start (status {proc.returncode})")
        if sock.exists():
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(1)
                try:
                    client.connect(str(sock))
                    client.sendall(b"PING\r\n")
                    if client.recv(16).startswith(b"+PONG"):
                        return
                except OSError:
                    pass
        time.sleep(0.05)
    raise EmbeddedRedisError(f"redis-server did not start within {_START_TIMEOUT_S:g} s")
