"""Names and labels of every Docker object a job creates. Each name embeds the job id, so two
jobs can never collide, and each object carries the job id label so a sweep can find it."""

from __future__ import annotations

import re

from dockguard.logs import request_id_var

LABEL_NAMESPACE = "dockguard"  # Dockerfiles may not set labels under it (submission policy)
JOB_LABEL = "dockguard.job-id"
MANAGED_LABEL = "dockguard.managed"
REQUEST_LABEL = "dockguard.request-id"
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+=-]")
OBJECT_PREFIX = "dockguard-"  # every container, network and volume name: prefix, job id, "-…"


def labels(job_id: str) -> dict[str, str]:
    """Every object of the job carries these: its id, the mark of dockguard's objects, and the
    id of the request that submitted it (logs.request_id_var, set by the worker for the job),
    with any character outside `[A-Za-z0-9._:@+=-]` replaced by `_`: the value is written into
    the build's `LABEL` instruction, where a quote or a `$` must never reach."""
    found = {JOB_LABEL: job_id, MANAGED_LABEL: "true"}
    request_id = request_id_var.get()
    if request_id:
        found[REQUEST_LABEL] = _UNSAFE.sub("_", request_id[:64])
    return found


def label_filter(job_id: str) -> dict[str, list[str]]:
    return {"label": [f"{JOB_LABEL}={job_id}"]}


def image_tag(job_id: str, stage: str) -> str:
    """`stage` is `build`: the user's image (nothing else is tagged any more)."""
    return f"dockguard/job-{job_id}:{stage}"


def container_name(job_id: str) -> str:
    return f"{OBJECT_PREFIX}{job_id}-run"


def volume_name(job_id: str) -> str:
    return f"{OBJECT_PREFIX}{job_id}-data"
