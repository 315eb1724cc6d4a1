"""/api/jobs: list (keyset pages), read, add, reschedule, cancel, requeue dead jobs."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import (
    AwareDatetime,
    Base64Bytes,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

from jobpub.db.producer import NewJob
from jobpub.db.web import DeadFilter, JobFilter, JobRecord
from jobpub.web.deps import Config, Store
from jobpub.web.problems import Problem
from jobpub.web.validation import Topic, outside_prefixes

router = APIRouter(prefix="/jobs", tags=["jobs"])

State = Literal["pending", "published", "dead", "expired"]
MAX_DELAY_S = 10 * 365 * 86400


def _base64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


class PropertiesOut(BaseModel):
    """MQTT 5 properties published with the job (dropped on a 3.1.1 connection)."""

    content_type: str | None
    user_properties: JsonValue = Field(
        description="an object of strings (a settled row is not checked: it may hold other JSON)"
    )
    response_topic: str | None
    correlation_data: str | None = Field(description="base64")


class JobOut(BaseModel):
    id: int
    topic: str
    payload: str = Field(description="a text payload; in lists, the first 200 characters")
    payload_base64: str | None = Field(
        description="a binary payload (payload_bytes), base64; in lists, its first 150 bytes"
    )
    payload_size: int = Field(description="bytes of the payload that is published")
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
    expired_at: datetime | None
    schedule_name: str | None
    dedupe_key: str | None
    properties: PropertiesOut

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        fields = {name: getattr(job, name) for name in JobRecord.__slots__}
        fields["payload_base64"] = _base64(job.payload_bytes)
        fields["properties"] = PropertiesOut(
            content_type=job.content_type,
            user_properties=job.user_properties,
            response_topic=job.response_topic,
            correlation_data=_base64(job.correlation_data),
        )
        return cls.model_validate(fields)


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


class PropertiesIn(BaseModel):
    """MQTT 5 properties to publish with the job."""

    model_config = ConfigDict(extra="forbid")
    content_type: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    user_properties: dict[str, str] | None = Field(
        default=None, description='string pairs: {"site": "north"}'
    )
    response_topic: Topic | None = None
    correlation_data: Base64Bytes | None = Field(default=None, description="base64")


class NewJobIn(When):
    topic: Topic
    payload: str | None = Field(default=None, description="a text payload (UTF-8)")
    payload_base64: Base64Bytes | None = Field(
        default=None, description="a binary payload instead of `payload`, base64"
    )
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    expires_at: AwareDatetime | None = Field(
        default=None, description="not published after this time: the job ends expired"
    )
    dedupe_key: Annotated[str, Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="taken by a kept job: that job is answered (200), not added"
    )
    properties: PropertiesIn | None = None

    @model_validator(mode="after")
    def _consistent(self) -> NewJobIn:
        if self.payload is not None and self.payload_base64 is not None:
            raise ValueError("give payload (text) or payload_base64 (binary), not both")
        if self.expires_at is not None:
            due = self.fire_at or datetime.now(UTC) + timedelta(seconds=self.delay or 0.0)
            if self.expires_at <= due:
                raise ValueError(
                    "expires_at must be later than fire_at (or now + delay): the job would "
                    "expire before it is due and never be published"
                )
        return self


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


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={200: {"model": JobOut, "description": "the kept job holding the dedupe_key"}},
)
async def add_job(job: NewJobIn, store: Store, config: Config, response: Response) -> JobOut:
    """Add a job; 201 with the job as stored. With a `dedupe_key` that a kept job holds
    already, nothing is added: 200 with that job."""
    refusal = outside_prefixes(job.topic, config.topic_prefixes)
    if refusal:
        raise Problem(400, refusal, "topic-not-allowed")
    properties = job.properties or PropertiesIn()
    payload = job.payload_base64 if job.payload_base64 is not None else job.payload or ""
    added, created = await store.add_job(
        NewJob(
            topic=job.topic,
            payload=payload,
            fire_at=job.fire_at,
            delay=job.delay or 0.0,
            qos=job.qos,
            retain=job.retain,
            expires_at=job.expires_at,
            dedupe_key=job.dedupe_key,
            content_type=properties.content_type,
            user_properties=properties.user_properties,
            response_topic=properties.response_topic,
            correlation_data=properties.correlation_data,
        )
    )
    # A dedupe key a kept job holds: that job, not a second one (as jobpub.client does).
    response.status_code = 201 if created else 200
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
