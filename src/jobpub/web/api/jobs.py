"""/api/jobs: list (keyset pages), read, add, reschedule, cancel, requeue dead jobs."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from jobpub.db.web import DeadFilter, JobFilter, JobRecord, NewJob
from jobpub.web.deps import Config, Store
from jobpub.web.problems import Problem
from jobpub.web.validation import Topic, outside_prefixes

router = APIRouter(prefix="/jobs", tags=["jobs"])

State = Literal["pending", "published", "dead"]
MAX_DELAY_S = 10 * 365 * 86400


class JobOut(BaseModel):
    id: int
    topic: str
    payload: str = Field(description="in lists, the first 200 characters")
    qos: int
    retain: bool
    fire_at: datetime
    state: State
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    failed_at: datetime | None
    processed_at: datetime | None
    created_at: datetime
    expires_at: datetime | None
    schedule_name: str | None

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        return cls.model_validate(job, from_attributes=True)


class JobPageOut(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class When(BaseModel):
    """A time: `fire_at` (with its offset), or `delay` seconds from the database's now."""

    model_config = ConfigDict(extra="forbid")
    fire_at: AwareDatetime | None = None
    delay: Annotated[float, Field(ge=0, le=MAX_DELAY_S)] | None = None

    @model_validator(mode="after")
    def _one_time(self) -> When:
        if self.fire_at is not None and self.delay is not None:
            raise ValueError("give fire_at or delay, not both")
        return self


class NewJobIn(When):
    topic: Topic
    payload: str = ""
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


class RescheduleIn(When):
    @model_validator(mode="after")
    def _some_time(self) -> RescheduleIn:
        if self.fire_at is None and self.delay is None:
            raise ValueError("give fire_at or delay")
        return self


class BulkRequeueIn(BaseModel):
    """Dead jobs to requeue: all of them matching every filter given, up to `limit`."""

    model_config = ConfigDict(extra="forbid")
    ids: list[int] | None = Field(default=None, max_length=10_000)
    topic: str | None = Field(default=None, description="a topic prefix")
    failed_after: AwareDatetime | None = None
    failed_before: AwareDatetime | None = None
    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class RequeuedOut(BaseModel):
    requeued: int
    ids: list[int]


def encode_cursor(cursor: tuple[datetime, int]) -> str:
    return base64.urlsafe_b64encode(f"{cursor[0].isoformat()}|{cursor[1]}".encode()).decode()


def decode_cursor(text: str) -> tuple[datetime, int]:
    try:
        fire_at, _, job_id = base64.urlsafe_b64decode(text.encode()).decode().partition("|")
        return datetime.fromisoformat(fire_at), int(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(
            400,
            "cursor: not a cursor this API gave out; pass next_cursor as it came",
            "invalid-request",
        ) from None


@router.get("", response_model=JobPageOut)
async def list_jobs(
    *,
    store: Store,
    state: State | None = None,
    topic: Annotated[str | None, Query(description="a topic prefix")] = None,
    after: Annotated[AwareDatetime | None, Query(description="fire_at at or after")] = None,
    before: Annotated[AwareDatetime | None, Query(description="fire_at before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> JobPageOut:
    """Jobs in (fire_at, id) order, a page at a time (keyset: no OFFSET, no count)."""
    page = await store.list_jobs(
        JobFilter(
            state=state,
            topic=topic or None,
            after=after,
            before=before,
            limit=limit,
            cursor=decode_cursor(cursor) if cursor else None,
        )
    )
    return JobPageOut(
        jobs=[JobOut.of(job) for job in page.jobs],
        next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None,
    )


@router.post("", status_code=201, response_model=JobOut)
async def add_job(job: NewJobIn, store: Store, config: Config, response: Response) -> JobOut:
    """Add a job; 201 with the job as stored."""
    refusal = outside_prefixes(job.topic, config.topic_prefixes)
    if refusal:
        raise Problem(400, refusal, "topic-not-allowed")
    added = await store.add_job(
        NewJob(
            topic=job.topic,
            payload=job.payload,
            fire_at=job.fire_at,
            delay=job.delay or 0.0,
            qos=job.qos,
            retain=job.retain,
        )
    )
    response.headers["Location"] = f"/api/jobs/{added.id}"
    return JobOut.of(added)


@router.post("/requeue", response_model=RequeuedOut)
async def requeue_dead_jobs(wanted: BulkRequeueIn, store: Store) -> RequeuedOut:
    """Put dead jobs matching the filter back in the queue (attempts from zero)."""
    requeued = await store.requeue_dead(
        DeadFilter(
            ids=wanted.ids,
            topic=wanted.topic or None,
            failed_after=wanted.failed_after,
            failed_before=wanted.failed_before,
            limit=wanted.limit,
        )
    )
    return RequeuedOut(requeued=len(requeued), ids=requeued[:1000])


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: int, store: Store) -> JobOut:
    return JobOut.of(await store.get_job(job_id))


@router.patch("/{job_id}", response_model=JobOut)
async def reschedule_job(job_id: int, when: RescheduleIn, store: Store) -> JobOut:
    """Move a pending job to a new time; 409 once it is published, dead or being sent."""
    return JobOut.of(await store.reschedule_job(job_id, when.fire_at, when.delay or 0.0))


@router.delete("/{job_id}", status_code=204)
async def cancel_job(job_id: int, store: Store) -> Response:
    """Cancel (delete) a pending job; 409 once it is published, dead or being sent."""
    await store.cancel_job(job_id)
    return Response(status_code=204)


@router.post("/{job_id}/requeue", response_model=JobOut)
async def requeue_job(job_id: int, store: Store) -> JobOut:
    """Put a dead job back in the queue; 409 if it is not dead."""
    return JobOut.of(await store.requeue_job(job_id))
