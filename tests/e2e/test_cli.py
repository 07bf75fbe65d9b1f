"""The client's commands (`dockguard submit | status | logs | cancel | jobs`) run as the program
they are, in a subprocess, against the real service: JSON on stdout and the exit status for
scripts; and, with stderr on a pseudo-terminal, the live view of the stages and the output."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import struct
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest_asyncio

from dockguard.models import Job, JobList, JobStatus
from tests.e2e.conftest import Dockguard, Instances, leftovers
from tests.e2e.test_client import FAST, FORBIDDEN, HELLO, SLEEPY, closed_port_url

FAILING = 'FROM busybox:latest\nUSER 1000\nCMD ["sh", "-c", "echo about-to-fail; exit 3"]\n'
_ESCAPES = re.compile(
    r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-Za-z]"
)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def job(self) -> Job:
        return Job.model_validate_json(self.out)


@pytest_asyncio.fixture
async def dg(instances: Instances) -> Dockguard:
    return await instances.get(**FAST)


def env_for(dg: Dockguard, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKGUARD_")}
    return env | {"DOCKGUARD_URL": str(dg.client.base_url)} | extra


async def cli(
    dg: Dockguard, *args: str, stdin: bytes | None = None, timeout_s: float = 120, **env: str
) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dockguard", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env_for(dg, **env),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def dockerfile(tmp_path: Path, text: str) -> str:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return str(path)


async def test_submit_prints_the_job_and_the_other_commands_read_it(
    dg: Dockguard, tmp_path: Path
) -> None:
    submitted = await cli(dg, "submit", dockerfile(tmp_path, HELLO))
    assert submitted.code == 0, submitted
    assert submitted.err == ""  # not a terminal: no progress, nothing but the job on stdout
    job = submitted.job()
    dg.submitted.append(job.id)
    assert job.status is JobStatus.SUCCEEDED and job.result is not None
    assert job.result.perf == 2.5
    assert submitted.out.startswith('{\n  "id": ')  # indented, as it always was

    status = await cli(dg, "status", job.id, "--json")
    assert (status.code, status.job()) == (0, job)
    summary = await cli(dg, "status", job.id)
    assert summary.code == 0 and f"job {job.id}" in summary.out
    assert re.search(r"status\s+succeeded", summary.out) and re.search(r"perf\s+2.5", summary.out)

    text = await cli(dg, "logs", job.id)
    assert text.code == 0 and "build | hello-from-build\n" in text.out
    followed = await cli(dg, "logs", job.id, "-f")
    assert followed.code == 0 and all(" | " in line for line in followed.out.splitlines())
    lines = followed.out.splitlines()
    assert lines.index("build | hello-from-build") < lines.index("run | hello-from-run")
    events = await cli(dg, "logs", job.id, "--follow", "--json")
    parsed = [json.loads(line) for line in events.out.splitlines()]
    assert {"kind": "log", "stage": "run", "line": "hello-from-run"}.items() <= next(
        e for e in parsed if e.get("line") == "hello-from-run"
    ).items()
    assert [e["status"] for e in parsed if e["kind"] == "status"][-1] == "succeeded"
    assert parsed[-1]["kind"] == "end"

    listed = await cli(dg, "jobs", "--json", "--status", "succeeded", "--limit", "100")
    assert listed.code == 0
    assert job.id in {j.id for j in JobList.model_validate_json(listed.out).jobs}
    plain = await cli(dg, "jobs", "--limit", "3")
    first = plain.out.splitlines()[0].split("\t")
    assert plain.code == 0 and first[:2] == [job.id, "succeeded"] and first[4] == "2.5"


async def test_a_failing_job_exits_1_and_a_refused_one_2(dg: Dockguard, tmp_path: Path) -> None:
    failed = await cli(dg, "submit", "-", stdin=FAILING.encode())  # from stdin
    assert failed.code == 1, failed
    job = failed.job()
    dg.submitted.append(job.id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "run_nonzero_exit"
    status = await cli(dg, "status", job.id)
    assert status.code == 1 and "run_nonzero_exit" in status.out

    refused = await cli(dg, "submit", dockerfile(tmp_path, FORBIDDEN))
    assert (refused.code, refused.out) == (2, "")
    assert "dockerfile_forbidden" in refused.err and "ONBUILD" in refused.err
    missing = await cli(dg, "status", "0" * 32, "--json")
    assert missing.code == 2 and "job_not_found" in missing.err
    no_file = await cli(dg, "submit", str(tmp_path / "nowhere"))
    assert no_file.code == 2 and "nowhere" in no_file.err
    for args in (["submit", dockerfile(tmp_path, HELLO)], ["jobs"], ["logs", "0" * 32, "-f"]):
        down = await cli(dg, *args, "--url", closed_port_url())  # --url wins over the env
        assert down.code == 2, (args, down)
        assert "connection_failed" in down.err


async def test_no_wait_a_wait_that_times_out_and_cancel(
    dg: Dockguard, tmp_path: Path, docker: aiodocker.Docker
) -> None:
    path = dockerfile(tmp_path, SLEEPY)
    queued = await cli(dg, "submit", path, "--no-wait")
    assert queued.code == 0, queued
    job = queued.job()
    dg.submitted.append(job.id)
    assert job.status is JobStatus.QUEUED

    waited = await cli(dg, "submit", path, "--timeout-s", "2")
    assert waited.code == 3, waited
    assert "wait_timeout" in waited.err
    other = waited.job()  # the job as it was, for the script to go on with
    dg.submitted.append(other.id)
    assert not other.status.terminal
    not_yet = await cli(dg, "status", job.id, "--wait", "1", "--json")
    assert not_yet.code == 3 and not not_yet.job().status.terminal

    for job_id in (job.id, other.id):
        cancelled = await cli(dg, "cancel", job_id, "--json")
        assert cancelled.code == 0, cancelled
        assert cancelled.job().status is JobStatus.CANCELLED
    again = await cli(dg, "cancel", job.id)
    assert again.code == 1 and "job_finished" in again.err
    status = await cli(dg, "status", job.id)
    assert status.code == 1 and "job_cancelled" in status.out
    for job_id in (job.id, other.id):
        for _ in range(50):
            if not await leftovers(docker, job_id):
                break
            await asyncio.sleep(0.1)
        assert await leftovers(docker, job_id) == []


async def on_a_terminal(
    dg: Dockguard, *args: str, stdout_too: bool = False
) -> tuple[int, str, str]:
    """Run the CLI with stderr (and, with `stdout_too`, stdout) on a pseudo-terminal of 120x40:
    the exit status, what the terminal received (escape sequences removed), and stdout."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = env_for(dg, TERM="xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE"):
        env.pop(name, None)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dockguard", *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=slave if stdout_too else asyncio.subprocess.PIPE, stderr=slave, env=env,
        )  # fmt: skip
    finally:
        os.close(slave)  # the child's copies are the only ones left: EOF when it exits
    terminal = asyncio.create_task(asyncio.to_thread(_read_until_closed, master))
    try:
        out = b"" if stdout_too or proc.stdout is None else await proc.stdout.read()
        code = await asyncio.wait_for(proc.wait(), 120)
        screen = await asyncio.wait_for(terminal, 10)
    finally:
        os.close(master)
    return code, _ESCAPES.sub("", screen.decode(errors="replace")), out.decode()


def _read_until_closed(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_on_a_terminal_submit_shows_the_stages_and_the_output_live(
    dg: Dockguard, tmp_path: Path
) -> None:
    code, screen, out = await on_a_terminal(dg, "submit", dockerfile(tmp_path, HELLO))
    assert code == 0, screen
    job = Job.model_validate_json(out)  # stdout, a pipe, holds only the job
    dg.submitted.append(job.id)
    assert job.status is JobStatus.SUCCEEDED
    assert f"job {job.id}" in screen
    for stage in ("queued", "scanning", "building", "running", "succeeded"):
        assert stage in screen, (stage, screen)
    assert "build | hello-from-build" in screen and "run | hello-from-run" in screen
    assert re.search(r"running\s+\d+\.\d s", screen), screen
    assert "perf 2.5" in screen
    assert screen.index("hello-from-build") < screen.rindex("succeeded")

    quiet, silent, printed = await on_a_terminal(
        dg, "submit", dockerfile(tmp_path, HELLO), "--json"
    )
    assert quiet == 0 and silent == ""  # --json: no progress even on a terminal
    dg.submitted.append(json.loads(printed)["id"])

    code, table, _ = await on_a_terminal(dg, "jobs", "--limit", "5", stdout_too=True)
    assert code == 0 and job.id in table and "succeeded" in table
