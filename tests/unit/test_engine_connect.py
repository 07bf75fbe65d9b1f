"""`sandbox.connect` with no URL where there is no engine to find (compose.yaml's API, given no
socket; an engine not up yet): a client of the default socket whose calls fail as an engine
that does not answer, not a process that cannot start."""

from __future__ import annotations

from pathlib import Path

import aiodocker
import pytest
from aiodocker import docker as aiodocker_docker

from dockguard.sandbox import connect


async def test_no_engine_to_find_is_an_engine_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # no docker context either
    monkeypatch.setattr(aiodocker_docker, "_sock_search_paths", [tmp_path / "docker.sock"])
    with pytest.raises((ValueError, AssertionError)):
        aiodocker.Docker()  # what connect() guards against
    docker = connect(None, 5)
    try:
        assert docker.connector.path == "/var/run/docker.sock"  # type: ignore[attr-defined]
    finally:
        await docker.close()


async def test_a_given_url_is_kept() -> None:
    docker = connect("unix:///nonexistent/docker.sock", 5)
    try:
        assert docker.connector.path == "/nonexistent/docker.sock"  # type: ignore[attr-defined]
    finally:
        await docker.close()
