"""The watchdog's rule, and what it sees in the engine (what it removes goes through
cleanup.py). Every worker runs it on each heartbeat (jobs/sweeper.py `watch`), so a job's
containers are watched even when the worker that started them is gone: SIGKILLed, lost, or
never back before their deadline.

`decide` is the rule, for one managed container of this deployment (its label names the Redis
this worker uses, names.py) or of none (made outside a worker):
- alive (running or paused) past its deadline label (names.container_labels): killed and
  removed, whichever worker (or none) started it; that worker would have killed it already;
- of a job whose record has ended or is gone, while no live attempt holds the job (a lease runs:
  arq's delivery, or the attempt's own): all the job's objects are removed
  (`EngineSandbox.cleanup`), as its own attempt's `finally` would have done;
- anything else is kept: a live attempt's objects are its own, an unfinished job's are the next
  attempt's to remove (its first step). Another deployment's (its own Redis, the same engine)
  are its own workers' to judge. The sweeper (cleanup.py `sweep`) stays the last net, by age,
  whatever the deployment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiodocker

from dockguard.sandbox import names

_ALIVE = frozenset({"running", "paused", "restarting"})
_MANAGED = {"label": [f"{names.MANAGED_LABEL}=true"]}


@dataclass(frozen=True)
class Watched:
    """A managed container as `containers/json` lists it."""

    id: str
    name: str
    job_id: str | None  # None: not a job's (e.g. the scanner DB refresh)
    alive: bool  # running or paused: it still holds CPU, memory and the job's time
    deadline: float | None  # Unix time; None: it has no deadline label
    deployment: str | None  # the id of the Redis holding its job's record

    @classmethod
    def from_listing(cls, entry: Mapping[str, Any]) -> Watched:
        labels: Mapping[str, str] = entry.get("Labels") or {}
        try:
            deadline: float | None = float(labels[names.DEADLINE_LABEL])
        except (KeyError, ValueError):
            deadline = None
        return cls(
            id=str(entry["Id"]),
            name=str((entry.get("Names") or [entry["Id"]])[0]).lstrip("/"),
            job_id=labels.get(names.JOB_LABEL) or None,
            alive=entry.get("State") in _ALIVE,
            deadline=deadline,
            deployment=labels.get(names.DEPLOYMENT_LABEL) or None,
        )


class JobState(StrEnum):
    """What this deployment's Redis says of a container's job."""

    ACTIVE = "active"  # unfinished
    ENDED = "ended"  # terminal
    GONE = "gone"  # no record: expired, or deleted
    UNKNOWN = "unknown"  # Redis could not say, or no deployment label: its deadline only
    FOREIGN = "foreign"  # another deployment's: never ours to judge


class Action(StrEnum):
    KEEP = "keep"
    KILL = "kill"  # this container: kill and remove it
    REMOVE_JOB = "remove_job"  # every object of its job


@dataclass(frozen=True)
class Decision:
    action: Action
    kind: str = ""  # the metric's label: past_deadline, job_ended, job_gone
    why: str = ""  # for the log line


KEEP = Decision(Action.KEEP)


def decide(container: Watched, job: JobState, attempt_live: bool, now: float) -> Decision:
    """Remove or keep `container` (pure): see the module's docstring."""
    if job is JobState.FOREIGN:
        return KEEP
    if container.alive and container.deadline is not None and now > container.deadline:
        late_s = now - container.deadline
        return Decision(Action.KILL, "past_deadline", f"past its deadline by {late_s:.0f} s")
    if container.job_id is None or attempt_live:
        return KEEP
    if job is JobState.ENDED:
        return Decision(Action.REMOVE_JOB, "job_ended", "its job has ended and no worker holds it")
    if job is JobState.GONE:
        return Decision(Action.REMOVE_JOB, "job_gone", "its job's record is gone")
    return KEEP


async def list_watched(docker: aiodocker.Docker) -> list[Watched]:
    """Every managed container, alive or not: one `containers/json` call."""
    listing = await docker.containers.list(all=True, filters=_MANAGED)
    fields = ("Id", "Names", "Labels", "State")
    return [
        Watched.from_listing({key: found[key] for key in fields if key in found})
        for found in listing
    ]
