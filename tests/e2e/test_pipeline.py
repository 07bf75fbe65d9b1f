"""Jobs through the whole pipeline, against the real engine, asserting the real outcome."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import aiodocker

from tests.e2e.conftest import Dockguard, Instances, leftovers


def writes(result: str, user: str = "1000") -> str:
    """A busybox Dockerfile whose run writes `result` to /data/perf.json."""
    command = json.dumps(f"printf '%s' {json.dumps(result)} > /data/perf.json")
    return f'FROM busybox:latest\nUSER {user}\nCMD ["sh", "-c", {command}]\n'


async def test_happy_path(dockguard: Dockguard, docker: aiodocker.Docker) -> None:
    job = await dockguard.run(writes('{"perf": 0.87, "epochs": 3}'))
    assert job["status"] == "succeeded", job["error"]
    assert job["error"] is None
    assert job["result"] == {"perf": 0.87, "data": {"perf": 0.87, "epochs": 3}}
    scan = job["scan"]["dockerfile"]
    assert scan["passed"] is True
    assert scan["scanner"]["name"] == "trivy" and scan["scanner"]["version"]
    assert scan["policy"]["fail_on"] == ["CRITICAL", "HIGH"]
    assert job["build"]["image_id"].startswith("sha256:")
    assert job["run"]["exit_code"] == 0
    assert job["run"]["timed_out"] is False and job["run"]["oom_killed"] is False
    assert job["run"]["limits"]["network"] == "none"
    assert job["run"]["limits"]["user"] == "1000:1000"
    assert job["created_at"] <= job["updated_at"] == job["finished_at"]
    assert await leftovers(docker, job["id"]) == []


async def test_perf_absent_is_null(dockguard: Dockguard) -> None:
    job = await dockguard.run(writes('{"accuracy": 0.5}'))
    assert job["status"] == "succeeded", job["error"]
    assert job["result"] == {"perf": None, "data": {"accuracy": 0.5}}


async def test_realistic_debian_python(dockguard: Dockguard) -> None:
    dockerfile = """\
FROM debian:bookworm-slim
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 \\
 && rm -rf /var/lib/apt/lists/*
USER nobody
CMD ["python3", "-c", "import json, math; \\
json.dump({'perf': round(math.pi, 4)}, open('/data/perf.json', 'w'))"]
"""
    job = await dockguard.run(dockerfile, timeout_s=600)
    assert job["status"] == "succeeded", (job["error"], job["build"])
    assert job["result"]["perf"] == 3.1416
    assert job["run"]["limits"]["user"] == "65534:65534"


async def test_user_root_is_rejected(dockguard: Dockguard, docker: aiodocker.Docker) -> None:
    job = await dockguard.run(
        'FROM busybox:latest\nUSER root\nCMD ["sh", "-c", "echo {} > /data/perf.json"]\n'
    )
    assert job["status"] == "rejected"
    assert job["error"]["code"] == "dockerfile_rejected"
    assert "DS-0002" in job["error"]["message"]
    scan = job["scan"]["dockerfile"]
    assert scan["passed"] is False
    root = [f for f in scan["findings"] if f["id"] == "DS-0002"]
    assert root and root[0]["line"] == 2 and root[0]["severity"] == "HIGH"
    assert scan["summary"]["HIGH"] >= 1
    assert job["build"] is None and job["run"] is None and job["result"] is None
    assert await leftovers(docker, job["id"]) == []


async def test_ignored_check_passes(instances: Instances) -> None:
    lenient = await instances.get(scan_ignore=["DS002"])
    job = await lenient.run('FROM busybox:latest\nCMD ["sh", "-c", "echo {} > /data/perf.json"]\n')
    assert job["status"] == "succeeded", job["error"]
    ignored = [f for f in job["scan"]["dockerfile"]["findings"] if f["id"] == "DS-0002"]
    assert ignored and ignored[0]["ignored"] is True
    assert job["run"]["limits"]["user"] == "65534:65534"  # no USER: never root, nobody instead


async def test_build_failure(dockguard: Dockguard, docker: aiodocker.Docker) -> None:
    job = await dockguard.run("FROM busybox:latest\nUSER 1000\nRUN echo before-failing && false\n")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "build_failed"
    assert "status 1" in job["error"]["message"]
    tail = "\n".join(job["build"]["log_tail"])
    assert "before-failing" in tail and "RUN echo before-failing && false" in tail
    assert job["run"] is None
    assert await leftovers(docker, job["id"]) == []


async def test_missing_base_image(dockguard: Dockguard) -> None:
    job = await dockguard.run("FROM dockguard-test/no-such-image:1\nUSER 1000\n")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "build_failed"
    assert "base image" in job["error"]["message"]
    # The engine's registry lookup error names resolvers and hosts: it must not reach clients.
    assert not re.search(r"lookup|dial tcp|\d+\.\d+\.\d+\.\d+", json.dumps(job))


async def test_nonzero_exit(dockguard: Dockguard) -> None:
    job = await dockguard.run(
        'FROM busybox:latest\nUSER 1000\nCMD ["sh", "-c", "echo about to fail; exit 3"]\n'
    )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "run_nonzero_exit"
    assert job["run"]["exit_code"] == 3
    assert "about to fail" in job["run"]["log_tail"]
    assert job["result"] is None


async def test_result_missing(dockguard: Dockguard) -> None:
    job = await dockguard.run('FROM busybox:latest\nUSER 1000\nCMD ["true"]\n')
    assert job["status"] == "failed"
    assert job["error"]["code"] == "result_missing"


async def test_result_not_json(dockguard: Dockguard) -> None:
    job = await dockguard.run(writes("perf = 0.9"))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "result_invalid"


async def test_result_symlink_to_passwd(dockguard: Dockguard) -> None:
    job = await dockguard.run(
        'FROM busybox:latest\nUSER 1000\nCMD ["ln", "-s", "/etc/passwd", "/data/perf.json"]\n'
    )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "result_not_regular_file"
    assert "root:" not in json.dumps(job)


async def test_run_timeout(instances: Instances, docker: aiodocker.Docker) -> None:
    quick = await instances.get(run_timeout_s=3)
    job = await quick.run('FROM busybox:latest\nUSER 1000\nCMD ["sleep", "1000"]\n')
    assert job["status"] == "failed"
    assert job["error"]["code"] == "run_timeout"
    assert job["run"]["timed_out"] is True
    assert 3 <= job["run"]["duration_s"] < 15
    assert await leftovers(docker, job["id"]) == []


async def test_no_network_at_run(dockguard: Dockguard, redis_port: int) -> None:
    # The sandbox's only interface is loopback, and 127.0.0.1 there is the container's own:
    # the host's Redis on 127.0.0.1 must not answer.
    script = (
        "ifaces=$(ls /sys/class/net | tr '\\n' ' '); "
        f"if echo PING | nc -w 2 127.0.0.1 {redis_port} >/dev/null 2>&1; "
        "then reached=true; else reached=false; fi; "
        'printf \'{"interfaces": "%s", "reached_host_redis": %s}\' "$ifaces" "$reached" '
        "> /data/perf.json"
    )
    job = await dockguard.run(
        f'FROM busybox:latest\nUSER 1000\nCMD ["sh", "-c", {json.dumps(script)}]\n'
    )
    assert job["status"] == "succeeded", (job["error"], job["run"])
    assert job["result"]["data"] == {"interfaces": "lo ", "reached_host_redis": False}


async def test_identical_jobs_run_independently(
    dockguard: Dockguard, docker: aiodocker.Docker
) -> None:
    dockerfile = writes('{"perf": 0.5}')
    responses = await asyncio.gather(*(dockguard.submit(dockerfile) for _ in range(5)))
    assert [r.status_code for r in responses] == [202] * 5
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 5
    jobs = await asyncio.gather(*(dockguard.wait(job_id, 180) for job_id in ids))
    assert [j["status"] for j in jobs] == ["succeeded"] * 5, [j["error"] for j in jobs]
    assert [j["result"]["perf"] for j in jobs] == [0.5] * 5
    assert len({j["build"]["image_id"] for j in jobs}) == 5  # nocache: no job shares an image
    for job_id in ids:
        assert await leftovers(docker, job_id) == []


async def test_build_timeout_stops_the_build(
    instances: Instances, docker: aiodocker.Docker
) -> None:
    quick = await instances.get(build_timeout_s=3)
    marker = uuid.uuid4().hex
    job = await quick.run(f"FROM busybox:latest\nUSER 1000\nRUN echo {marker} && sleep 1000\n")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "build_timeout"
    assert marker in "\n".join(job["build"]["log_tail"])
    # The engine cancels a build whose client went away; its RUN container must be gone too.
    deadline = time.monotonic() + 10
    while True:
        running = [
            c for c in await docker.containers.list(all=True) if marker in c._container["Command"]
        ]
        if not running:
            break
        assert time.monotonic() < deadline, f"the timed-out build's container remains: {running}"
        await asyncio.sleep(0.2)


_IDENTITY_SCRIPT = """printf '{"uid": %s, "gid": %s}' $(id -u) $(id -g) > /data/perf.json"""
IDENTITY = f"CMD {json.dumps(['sh', '-c', _IDENTITY_SCRIPT])}\n"


async def test_zero_padded_root_uid_runs_as_nobody(dockguard: Dockguard) -> None:
    job = await dockguard.run("FROM busybox:latest\nUSER 0000\n" + IDENTITY)
    if job["status"] == "rejected":  # the scanner saw through it: also a safe outcome
        assert job["error"]["code"] == "dockerfile_rejected"
        return
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["data"] == {"uid": 65534, "gid": 65534}


async def test_user_name_mapped_to_uid_zero_runs_as_nobody(dockguard: Dockguard) -> None:
    job = await dockguard.run(
        "FROM busybox:latest\nRUN echo 'toor:x:0:0::/:/bin/sh' > /etc/passwd\nUSER toor\n"
        + IDENTITY
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["data"] == {"uid": 65534, "gid": 65534}
    assert job["run"]["limits"]["user"] == "65534:65534"


async def test_named_user_with_primary_group(dockguard: Dockguard) -> None:
    job = await dockguard.run(
        "FROM busybox:latest\n"
        "RUN echo 'app:x:1234:2345::/:/bin/sh' > /etc/passwd && echo 'app:x:2345:' > /etc/group\n"
        "USER app\n" + IDENTITY
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["data"] == {"uid": 1234, "gid": 2345}


async def test_build_network_none_blocks_the_network_in_run_steps(instances: Instances) -> None:
    dockerfile = (
        'FROM busybox:latest\nRUN test "$(ls /sys/class/net)" = lo\nUSER 1000\n'
        + writes('{"perf": 1}').split("\n", 2)[2]
    )
    isolated = await instances.get(build_network="none")
    job = await isolated.run(dockerfile)
    assert job["status"] == "succeeded", (job["error"], job["build"])
    assert job["build"]["limits"]["network"] == "none"
    connected = await instances.get(build_network="bridge")  # the same check fails with a network
    job = await connected.run(dockerfile)
    assert job["error"]["code"] == "build_failed"


async def test_build_without_a_process_limit(instances: Instances) -> None:
    unlimited = await instances.get(build_pids=0)
    job = await unlimited.run(writes('{"perf": 1}'))
    assert job["status"] == "succeeded", job["error"]
    assert job["build"]["limits"]["pids"] == 0
