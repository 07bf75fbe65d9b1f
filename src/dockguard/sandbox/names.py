"""Names and labels of every Docker object a job creates. Each name embeds the job id, so two
jobs can never collide, and each object carries the job id label so a sweep can find it.

The run container, its /data holder and the build's step containers (through the image labels
the build sets) carry a deadline too (`container_labels`): the Unix time by which they must have
ended, so that any worker's watchdog (jobs/sweeper.py `watch`) can enforce it without asking
Redis, whichever worker (or none) is left to watch the job."""

from __future__ import annotations

import math
import re
import time
from contextvars import ContextVar

from dockguard.logs import request_id_var

LABEL_NAMESPACE = "dockguard"  # Dockerfiles may not set labels under it (submission policy)
JOB_LABEL = "dockguard.job-id"
MANAGED_LABEL = "dockguard.managed"
REQUEST_LABEL = "dockguard.request-id"
DEADLINE_LABEL = "dockguard.deadline"  # containers: Unix time (s) past which it is killed
DEPLOYMENT_LABEL = "dockguard.deployment"  # the id of the Redis that holds the job's record
# Past a container's own timeout: the worker's own kill (and its wait for the exit) comes first.
DEADLINE_GRACE_S = 30
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+=-]")
OBJECT_PREFIX = "dockguard-"  # every container, network and volume name: prefix, job id, "-…"

# Set by the worker at its start (jobs/worker.py): arq's poll loop starts every job in a task of
# its own, which inherits it. Unset (tests driving the sandbox directly): no deployment label.
deployment_var: ContextVar[str | None] = ContextVar("dockguard_deployment", default=None)


def labels(job_id: str) -> dict[str, str]:
    """Every object of the job carries these: its id, the mark of dockguard's objects, the id of
    the request that submitted it (logs.request_id_var, set by the worker for the job) and of
    the deployment whose Redis holds the job (`deployment_var`), each with any character outside
    `[A-Za-z0-9._:@+=-]` replaced by `_`: the value is written into the build's `LABEL`
    instruction, where a quote or a `$` must never reach."""
    found = {JOB_LABEL: job_id, MANAGED_LABEL: "true"}
    request_id = request_id_var.get()
    if request_id:
        found[REQUEST_LABEL] = _UNSAFE.sub("_", request_id[:64])
    deployment = deployment_var.get()
    if deployment:
        found[DEPLOYMENT_LABEL] = _UNSAFE.sub("_", deployment[:64])
    return found


def container_labels(job_id: str, timeout_s: float, *, now: float | None = None) -> dict[str, str]:
    """`labels`, and the deadline of a container that may live `timeout_s` from `now`."""
    return labels(job_id) | {DEADLINE_LABEL: str(deadline(timeout_s, now=now))}


def deadline(timeout_s: float, *, now: float | None = None) -> int:
    """The Unix time (whole seconds, rounded up) by which a container that may live `timeout_s`
    from `now` must be dead: its timeout and `DEADLINE_GRACE_S`."""
    start = time.time() if now is None else now
    return math.ceil(start + timeout_s + DEADLINE_GRACE_S)


def label_filter(job_id: str) -> dict[str, list[str]]:
    return {"label": [f"{JOB_LABEL}={job_id}"]}


def image_tag(job_id: str, stage: str) -> str:
    """`stage` is `build`: the user's image (nothing else is tagged any more)."""
    return f"dockguard/job-{job_id}:{stage}"


def container_name(job_id: str) -> str:
    return f"{OBJECT_PREFIX}{job_id}-run"


def volume_name(job_id: str) -> str:
    return f"{OBJECT_PREFIX}{job_id}-data"
