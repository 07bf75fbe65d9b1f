"""Keeping Trivy's vulnerability DB fresh: an arq cron job, checked hourly and at worker start,
downloads a new DB when the one in the cache is older than `DOCKGUARD_SCANNER_DB_REFRESH_H`.
A Redis lock makes one worker of many do it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from arq.cron import CronJob, cron

from dockguard.errors import JobFailure
from dockguard.services import Services
from dockguard.store.keys import DB_REFRESH_LOCK

log = logging.getLogger(__name__)

_LOCK_S = 1800


async def refresh_db(services: Services) -> str:
    """Download a new DB if the current one is missing or due; returns what happened."""
    try:
        status = await services.scanner.status()
    except JobFailure as failure:
        log.error("vulnerability DB refresh impossible", extra={"why": failure.message})
        return "failed"
    due_h = services.settings.scanner_db_refresh_h
    if status.db_age_h is not None and status.db_age_h < due_h:
        return "fresh"
    if not await services.redis.set(DB_REFRESH_LOCK, "1", nx=True, ex=_LOCK_S):
        return "another worker is refreshing"
    try:
        db = await services.scanner.update_db()
    except JobFailure as failure:
        log.warning("vulnerability DB refresh failed", extra={"why": failure.message})
        return "failed"
    finally:
        await services.redis.delete(DB_REFRESH_LOCK)
    age_h = (datetime.now(UTC) - db.updated_at).total_seconds() / 3600
    log.info("vulnerability DB refreshed", extra={"updated_at": str(db.updated_at), "age_h": age_h})
    return "refreshed"


async def _cron_task(ctx: dict[str, Any]) -> str:
    return await refresh_db(ctx["services"])


def refresh_cron(services: Services) -> list[CronJob]:
    if not services.settings.scanner_db_refresh_h:
        return []
    return [cron(_cron_task, name="refresh_db", minute={7}, run_at_startup=True, timeout=3600)]
