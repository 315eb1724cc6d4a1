"""/api/pauses: pause and resume publishing by MQTT topic filter (the `pauses` table).

A filter holds `/`, `+` and `#`, so in a path it is URL-encoded: `#` must be `%23`
(a bare `#` starts the URL's fragment), `/` and `+` may stay as they are or be `%2F` and
`%2B`. `DELETE /api/pauses/devices/%2B/valve/%23` resumes `devices/+/valve/#`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from jobpub.db.web import PauseRecord
from jobpub.web.deps import Store
from jobpub.web.validation import check_filter

router = APIRouter(prefix="/pauses", tags=["pauses"])

FILTER_EXAMPLES = ["devices/+/valve/#", "home/lamp/7", "#"]


class PauseOut(BaseModel):
    filter: str = Field(examples=FILTER_EXAMPLES)
    reason: str | None
    paused_at: datetime
    paused_for_s: float


class PauseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: Annotated[str, AfterValidator(check_filter)] = Field(
        description="an MQTT topic filter: '+' is one whole level, '#' the last level",
        examples=FILTER_EXAMPLES,
    )
    reason: str | None = Field(default=None, max_length=1000, examples=["valve maintenance"])


def pause_out(pause: PauseRecord) -> PauseOut:
    return PauseOut(
        filter=pause.filter,
        reason=pause.reason,
        paused_at=pause.paused_at,
        paused_for_s=round(pause.paused_for_s, 3),
    )


def pause_path(topic_filter: str) -> str:
    return "/api/pauses/" + quote(topic_filter, safe="/")


@router.get("", response_model=list[PauseOut])
async def list_pauses(store: Store) -> list[PauseOut]:
    """Every paused filter, oldest first."""
    return [pause_out(p) for p in await store.list_pauses()]


@router.get("/{topic_filter:path}", response_model=PauseOut)
async def get_pause(topic_filter: str, store: Store) -> PauseOut:
    """One pause; the filter URL-encoded (`#` as `%23`)."""
    return pause_out(await store.get_pause(topic_filter))


@router.post(
    "",
    status_code=201,
    response_model=PauseOut,
    responses={200: {"model": PauseOut, "description": "paused already; the reason replaced"}},
)
async def pause(wanted: PauseIn, store: Store, response: Response) -> PauseOut:
    """Stop every replica claiming pending jobs whose topic the filter matches.

    201 for a new pause; 200 if the filter was paused already (it keeps its start, a
    reason given replaces the old one): pausing twice is not an error."""
    paused, created = await store.pause(wanted.filter, wanted.reason)
    response.status_code = 201 if created else 200
    response.headers["Location"] = pause_path(paused.filter)
    return pause_out(paused)


@router.delete("/{topic_filter:path}", status_code=204)
async def resume(topic_filter: str, store: Store) -> Response:
    """Resume a filter (URL-encoded, `#` as `%23`): its due jobs go out at once. 404 if
    it is not paused."""
    await store.resume(topic_filter)
    return Response(status_code=204)
