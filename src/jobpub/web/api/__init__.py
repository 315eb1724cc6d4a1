"""The REST API under /api, one module per resource (jobs, stats, schedules).

A resource added later (pauses, replicas) is a module with its own `router`, included
in `router` below.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from jobpub.web.api import jobs, schedules, stats
from jobpub.web.deps import authorize

router = APIRouter(prefix="/api", dependencies=[Depends(authorize)])
for resource in (stats, jobs, schedules):
    router.include_router(resource.router)
