"""README's "Every operation" section, run as written: its shell blocks as one bash script (curl,
jq and the CLI) and its Python blocks as one Python script (dockguard.client), against a real
dockguard, checking what they print. Only the URL is changed, to the instance's."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Dockguard, Instances

README = Path(__file__).resolve().parents[2] / "README.md"
URL = "http://127.0.0.1:8000"
# A profile of its own, so that the jobs listed at the end are the examples' only.
PROFILE = {"run_timeout_s": 45, "build_timeout_s": 60, "build_network": "none"}


def blocks(language: str) -> str:
    text = README.read_text()
    section = text.split("<!-- operations: start -->")[1].split("<!-- operations: end -->")[0]
    found = re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.M | re.S)
    assert found, f"no {language} blocks in the README's operations section"
    return "\n".join(found)


async def run(dg: Dockguard, cwd: Path, *command: str) -> tuple[int, str]:
    url = str(dg.client.base_url).rstrip("/")
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "DOCKGUARD_URL": url, "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(300):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def remember_jobs(dg: Dockguard) -> None:
    """Every job the examples made, for the session's check that none is left in the engine."""
    listed = (await dg.client.get("/v1/jobs", params={"limit": 100})).json()
    dg.submitted.extend(job["id"] for job in listed["jobs"])


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        (
            "sh",
            ["queued", "queued", "0.87", "succeeded", "run | hello-from-run", "job_cancelled",
             "cancelled", "exit 1"],
        ),
        (
            "python",
            ["succeeded 0.87", "run | hello-from-run", "True True", "job_cancelled",
             "409 job_finished"],
        ),
    ],
)  # fmt: skip
async def test_every_operation_runs_as_written(
    instances: Instances, tmp_path: Path, language: str, expected: list[str]
) -> None:
    dg = await instances.get(**PROFILE)
    script = blocks(language).replace(URL, str(dg.client.base_url).rstrip("/"))
    assert URL not in script
    (tmp_path / "Dockerfile").write_text(
        'FROM busybox:latest\nUSER 1000\nCMD ["sh", "-c", "echo hello-from-run; '
        'echo \'{\\"perf\\": 0.87}\' > /data/perf.json"]\n'
    )  # the Python blocks use the file the shell blocks write
    (tmp_path / "Slow.Dockerfile").write_text(
        'FROM busybox:latest\nUSER 1000\nCMD ["sleep", "600"]\n'
    )
    try:
        if language == "sh":
            code, out = await run(dg, tmp_path, "bash", "-euo", "pipefail", "-c", script)
        else:
            code, out = await run(dg, tmp_path, sys.executable, "-c", script)
    finally:
        await remember_jobs(dg)
    assert code == 0, out
    lines = [line.strip() for line in out.splitlines()]
    position = 0
    for want in expected:  # each in order, each on a line of its own
        assert want in lines[position:], f"{want!r} missing after line {position}:\n{out}"
        position = lines.index(want, position) + 1
