"""The watchdog's pure parts: the deadline a container is labelled with, how a `containers/json`
entry is read, the rule that keeps or removes a container (sandbox/watchdog.py `decide`), and a
round of it against the fakes where no Redis is needed (deadlines). The real thing, with a
SIGKILLed worker, runs in tests/e2e/test_orphans.py."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from dockguard import metrics
from dockguard.jobs.sweeper import watch
from dockguard.logs import request_id_var
from dockguard.models import BuildLimits, RunLimits
from dockguard.sandbox import names
from dockguard.sandbox.build import labelled
from dockguard.sandbox.run import holder_config, run_config
from dockguard.sandbox.watchdog import Action, Decision, JobState, Watched, decide
from tests.unit.fakes import fakes

NOW = 1_800_000_000.0
JOB = "0123456789abcdef0123456789abcdef"
LIMITS = BuildLimits(
    memory_mb=512,
    cpus=1.0,
    pids=0,
    timeout_s=120,
    network="none",
    nocache=True,
    file_size_mb=64,
    nofile=64,
)


def watched(
    *,
    alive: bool = True,
    deadline: float | None = NOW + 60,
    job_id: str | None = JOB,
    deployment: str | None = "ours",
) -> Watched:
    return Watched(
        id="c" * 64,
        name=f"dockguard-{job_id}-run",
        job_id=job_id,
        alive=alive,
        deadline=deadline,
        deployment=deployment,
    )


def test_the_deadline_is_the_timeout_and_the_grace_rounded_up() -> None:
    assert names.deadline(60, now=NOW) == NOW + 60 + names.DEADLINE_GRACE_S
    assert names.deadline(0.2, now=NOW + 0.5) == NOW + 1 + names.DEADLINE_GRACE_S
    labels = names.container_labels(JOB, 300, now=NOW)
    assert labels[names.DEADLINE_LABEL] == str(int(NOW) + 300 + names.DEADLINE_GRACE_S)
    assert labels[names.JOB_LABEL] == JOB and labels[names.MANAGED_LABEL] == "true"


def test_the_deployment_label_is_there_only_when_a_worker_set_it() -> None:
    assert names.DEPLOYMENT_LABEL not in names.labels(JOB)
    token = names.deployment_var.set("d3pl0y'$x")
    try:
        assert names.labels(JOB)[names.DEPLOYMENT_LABEL] == "d3pl0y__x"  # LABEL-safe
    finally:
        names.deployment_var.reset(token)


def test_run_holder_and_build_containers_carry_their_deadline() -> None:
    limits = RunLimits(
        memory_mb=64,
        cpus=0.5,
        pids=32,
        timeout_s=60,
        tmpfs_mb=8,
        file_size_mb=8,
        data_mb=8,
        nofile=64,
    )
    before = names.deadline(60)
    config = run_config(JOB, "sha256:" + "a" * 64, "1000:1000", limits, ())
    run = int(config["Labels"][names.DEADLINE_LABEL])
    assert before <= run <= names.deadline(60)
    holder = int(holder_config(JOB, "busybox:latest", 60)["Labels"][names.DEADLINE_LABEL])
    assert holder > run  # it sleeps past the run, until the job's cleanup
    token = request_id_var.set("req-1")
    try:
        dockerfile = labelled('FROM busybox:latest\nRUN ["true"]\n', JOB, LIMITS.timeout_s)
    finally:
        request_id_var.reset(token)
    label_line = dockerfile.split("\n")[1]
    assert label_line.startswith("LABEL ") and f'{names.DEADLINE_LABEL}="' in label_line
    assert f'{names.JOB_LABEL}="{JOB}"' in label_line


def test_a_listing_entry_is_read_as_the_engine_gives_it() -> None:
    entry = {
        "Id": "f" * 64,
        "Names": ["/dockguard-x-run"],
        "State": "running",
        "Labels": {
            names.JOB_LABEL: "x",
            names.MANAGED_LABEL: "true",
            names.DEADLINE_LABEL: "1800000090",
            names.DEPLOYMENT_LABEL: "ours",
        },
    }
    found = Watched.from_listing(entry)
    assert found == Watched(
        id="f" * 64,
        name="dockguard-x-run",
        job_id="x",
        alive=True,
        deadline=1_800_000_090.0,
        deployment="ours",
    )
    bare = Watched.from_listing({"Id": "e" * 64, "State": "exited", "Labels": None})
    assert (bare.alive, bare.job_id, bare.deadline, bare.deployment) == (False, None, None, None)
    bad = Watched.from_listing({**entry, "Labels": {names.DEADLINE_LABEL: "soon"}})
    assert bad.deadline is None


@pytest.mark.parametrize("job", [state for state in JobState if state is not JobState.FOREIGN])
@pytest.mark.parametrize("live", [True, False])
def test_an_alive_container_past_its_deadline_is_killed_whoever_holds_its_job(
    job: JobState, live: bool
) -> None:
    decision = decide(watched(deadline=NOW - 5), job, live, NOW)
    assert (decision.action, decision.kind) == (Action.KILL, "past_deadline")
    assert "5 s" in decision.why


@pytest.mark.parametrize(
    ("container", "job", "live", "expected"),
    [
        # A running job on any worker, ours or not: kept.
        (watched(), JobState.ACTIVE, True, Action.KEEP),
        (watched(), JobState.ACTIVE, False, Action.KEEP),  # the next attempt removes it
        # Its job ended (a cancel, the reaper) or its record is gone, and no attempt holds it.
        (watched(), JobState.ENDED, False, Action.REMOVE_JOB),
        (watched(), JobState.GONE, False, Action.REMOVE_JOB),
        (watched(alive=False, deadline=NOW - 5), JobState.ENDED, False, Action.REMOVE_JOB),
        # The attempt that holds it is alive: its own `finally` removes it.
        (watched(), JobState.ENDED, True, Action.KEEP),
        (watched(), JobState.GONE, True, Action.KEEP),
        # No deployment label, or Redis could not say: only its deadline counts.
        (watched(deployment=None), JobState.UNKNOWN, False, Action.KEEP),
        # Another deployment's (its own Redis, this engine): its own workers judge it.
        (watched(deadline=NOW - 5), JobState.FOREIGN, False, Action.KEEP),
        # Stopped past its deadline (a run waiting for its result to be read): not the rule's.
        (watched(alive=False, deadline=NOW - 5), JobState.ACTIVE, True, Action.KEEP),
        (watched(alive=False, deadline=NOW - 5), JobState.UNKNOWN, False, Action.KEEP),
        # No deadline label (the egress proxy, a scanner): judged by its job only.
        (watched(deadline=None), JobState.ACTIVE, False, Action.KEEP),
        (watched(deadline=None), JobState.ENDED, False, Action.REMOVE_JOB),
        # Not a job's (the scanner DB refresh): never.
        (watched(job_id=None, deadline=None), JobState.UNKNOWN, False, Action.KEEP),
        # Exactly at its deadline: not yet past it.
        (watched(deadline=NOW), JobState.ACTIVE, True, Action.KEEP),
    ],
)
def test_remove_or_keep(container: Watched, job: JobState, live: bool, expected: Action) -> None:
    decision = decide(container, job, live, NOW)
    assert decision.action is expected, decision
    if expected is not Action.KEEP:
        assert decision.kind in metrics.ORPHAN_KINDS and decision.why


def test_every_kind_of_removal_is_a_series_from_the_start() -> None:
    kinds = {decide(watched(deadline=NOW - 1), JobState.ACTIVE, True, NOW).kind}
    kinds |= {decide(watched(), state, False, NOW).kind for state in JobState}
    assert len(kinds) == len(metrics.ORPHAN_KINDS) + 1  # and KEEP's
    assert kinds - {Decision(Action.KEEP).kind} == set(metrics.ORPHAN_KINDS)
    for kind in metrics.ORPHAN_KINDS:
        assert removed(kind) is not None, kind


def removed(kind: str) -> float | None:
    return REGISTRY.get_sample_value("dockguard_orphans_removed_total", {"kind": kind})


async def test_a_round_kills_what_is_past_its_deadline_without_asking_redis() -> None:
    """No job of this deployment (the fakes have no Redis): deadlines are enforced all the same,
    on containers of no deployment too; another deployment's are left to its own workers."""
    f = fakes()
    overdue = Watched("a" * 64, "dockguard-a-run", "a", True, NOW - 1, None)
    young = Watched("b" * 64, "dockguard-b-run", "b", True, NOW + 60, None)
    stopped = Watched("c" * 64, "dockguard-c-run", "c", False, NOW - 1, None)
    foreign = Watched("d" * 64, "dockguard-d-run", "d", True, NOW - 1, "theirs")
    f.sandbox.containers = [overdue, young, stopped, foreign]
    counted = removed("past_deadline") or 0.0
    assert await watch(f.services, None, now=NOW) == 1
    assert f.sandbox.containers == [young, stopped, foreign]
    assert f.sandbox.calls == ["watched", f"kill {'a' * 64}"]
    assert removed("past_deadline") == counted + 1


async def test_a_round_never_raises() -> None:
    f = fakes()

    async def failing() -> list[Watched]:
        raise RuntimeError("engine down")

    f.sandbox.watched = failing  # type: ignore[method-assign]
    assert await watch(f.services, "ours", now=NOW) == 0
