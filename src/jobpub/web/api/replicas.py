"""/api/replicas: the `jobpub run` replicas registered in jobpub_replicas, with heartbeats."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from jobpub.db.web import ReplicaRow
from jobpub.web.deps import Config, Store

router = APIRouter(prefix="/replicas", tags=["replicas"])


class ReplicaOut(BaseModel):
    id: str
    host: str
    version: str
    partition: str = Field(description="JOBPUB_CONSUMER_INDEX/JOBPUB_CONSUMER_COUNT")
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float = Field(description="seconds since its last heartbeat")
    live: bool = Field(description="heartbeat within JOBPUB_REPLICA_STALE_AFTER")


def replica_out(replica: ReplicaRow) -> ReplicaOut:
    return ReplicaOut(
        id=replica.id,
        host=replica.host,
        version=replica.version,
        partition=replica.partition,
        started_at=replica.started_at,
        heartbeat_at=replica.heartbeat_at,
        heartbeat_age_s=round(replica.heartbeat_age_s, 3),
        live=replica.live,
    )


@router.get("", response_model=list[ReplicaOut])
async def list_replicas(store: Store, config: Config) -> list[ReplicaOut]:
    """Every registered replica; one that stopped without a clean exit stays listed, not
    live, until a live replica removes it."""
    return [replica_out(r) for r in await store.list_replicas(config.replica_stale_after)]
