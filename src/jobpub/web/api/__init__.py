"""The REST API under /api, one module per resource, each with its own `router`."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from jobpub.web.api import jobs, pauses, replicas, schedules, stats
from jobpub.web.deps import authorize

router = APIRouter(prefix="/api", dependencies=[Depends(authorize)])
for resource in (stats, jobs, schedules, pauses, replicas):
    router.include_router(resource.router)
