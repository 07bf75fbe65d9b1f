"""Names and labels of every Docker object a job creates. Each name embeds the job id, so two
jobs can never collide, and each object carries the job id label so a sweep can find it."""

from __future__ import annotations

LABEL_NAMESPACE = "dockguard"  # Dockerfiles may not set labels under it (submission policy)
JOB_LABEL = "dockguard.job-id"
MANAGED_LABEL = "dockguard.managed"
OBJECT_PREFIX = "dockguard-"  # every container, network and volume name: prefix, job id, "-…"


def labels(job_id: str) -> dict[str, str]:
    return {JOB_LABEL: job_id, MANAGED_LABEL: "true"}


def label_filter(job_id: str) -> dict[str, list[str]]:
    return {"label": [f"{JOB_LABEL}={job_id}"]}


def image_tag(job_id: str, stage: str) -> str:
    """`stage` is `build`: the user's image (nothing else is tagged any more)."""
    return f"dockguard/job-{job_id}:{stage}"


def container_name(job_id: str) -> str:
    return f"{OBJECT_PREFIX}{job_id}-run"


def volume_name(job_id: str) -> str:
    return f"{OBJECT_PREFIX}{job_id}-data"
