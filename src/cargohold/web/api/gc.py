"""Garbage collection metrics for superusers (/superuser/gc): the last passes, totals of
what was collected and bytes freed, the backlog the last pass left, the last error.
Prometheus has the same figures as cargohold_gc_* on /metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from cargohold.services import gc
from cargohold.web.api.deps import Caller, Superuser

router = APIRouter(tags=["garbage collection"])

SuperCaller = Annotated[Caller, Depends(Superuser())]


@router.get("/superuser/gc", summary="Garbage collection: recent passes, totals, backlog")
async def gc_status(
    caller: SuperCaller,
    limit: Annotated[int, Query(ge=1, le=100, description="Recent passes to list.")] = 20,
) -> dict[str, Any]:
    """Passes are recorded by whichever process runs the collector (a server worker or
    `cargohold worker`); a stretch of idle passes shares one row. Totals cover the kept
    history (30 days) and leave dry runs out."""
    settings = caller.runtime.settings.gc
    body = await gc.report(caller.runtime.db, limit)
    body["settings"] = {
        "enabled": settings.enabled,
        "dry_run": settings.dry_run,
        "interval_seconds": settings.interval_seconds,
        "batch_size": settings.batch_size,
        "grace_seconds": settings.grace_seconds,
        "deletion_lease_seconds": settings.deletion_lease_seconds,
    }
    return body
