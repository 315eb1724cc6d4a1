"""The dashboard: server-rendered pages over the same store as the API.

Pages need a session cookie (set by /login with a token); every form that changes
something carries the session's CSRF token, checked before the change.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from jobpub.db.pauses import InvalidFilter
from jobpub.db.producer import JobConflict, JobNotFound
from jobpub.db.web import STATES, DeadFilter, JobFilter, PauseNotFound, WebStore
from jobpub.scheduling.durations import parse_duration
from jobpub.web.api.jobs import decode_cursor, encode_cursor
from jobpub.web.api.replicas import replica_out
from jobpub.web.api.schedules import next_occurrences
from jobpub.web.auth import SESSION_COOKIE, SESSION_MAX_AGE_S, Session
from jobpub.web.charts import sparkline
from jobpub.web.config import WebConfig
from jobpub.web.deps import authenticator, config, store
from jobpub.web.problems import Problem
from jobpub.web.validation import check_filter

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
OPEN_SESSION = Session("local", "admin")  # no token: one session, signed per process


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


templates.env.filters["time"] = _time
templates.env.filters["duration"] = _duration
templates.env.filters["seconds"] = _seconds


class LoginRequired(Exception):
    """A page asked for without a valid session: the handler redirects to /login."""


def page_session(request: Request) -> Session:
    auth = authenticator(request)
    if auth.open_access:
        return OPEN_SESSION
    session = auth.session_of_cookie(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired
    return session


PageSession = Annotated[Session, Depends(page_session)]
Store = Annotated[WebStore, Depends(store)]


def _render(request: Request, session: Session | None, name: str, **context: Any) -> HTMLResponse:
    auth = authenticator(request)
    return templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "csrf": auth.csrf_token(session) if session else "",
            "open_access": auth.open_access,
            "notice": request.query_params.get("notice"),
            **context,
        },
    )


def _checked_action(request: Request, session: Session, csrf: str) -> None:
    """Refuse a change without this session's CSRF token, or from the read-only role."""
    if not authenticator(request).csrf_valid(session, csrf):
        raise Problem(403, "the form's CSRF token is missing or stale: reload the page", "csrf")
    if session.role != "admin":
        raise Problem(403, "the read-only token may only look", "forbidden")


def _back(path: str, notice: str, **query: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode({**query, 'notice': notice})}", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    if authenticator(request).open_access:
        return RedirectResponse("/", status_code=303)
    return _render(request, None, "login.html", error=None)


@router.post("/login")
async def login(request: Request, *, token: Annotated[str, Form()] = "") -> Response:
    auth = authenticator(request)
    role = auth.role_of_token(token)
    if role is None:
        page = _render(request, None, "login.html", error="That token is not accepted.")
        page.status_code = 401
        return page
    _, cookie = auth.new_session(role)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(
    request: Request, *, session: PageSession, csrf: Annotated[str, Form()] = ""
) -> Response:
    if not authenticator(request).csrf_valid(session, csrf):
        raise Problem(403, "the form's CSRF token is missing or stale: reload the page", "csrf")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _overview(store: WebStore, config: WebConfig) -> dict[str, Any]:
    # One read of the replicas: the live count and the table below agree.
    stats, fleet = await store.stats(), await store.fleet(config.replica_stale_after)
    history = await store.history(60)
    last_lag = next((m.max_lag_s for m in reversed(history) if m.max_lag_s is not None), None)
    return {
        "stats": stats,
        "fleet": fleet,
        "replicas": [replica_out(r) for r in fleet.replicas],
        "stale_after": config.replica_stale_after,
        "rate": stats.published_per_s,  # as /api/stats gives it
        "last_lag": last_lag,
        "probe": await store.probe_status(),
        "charts": {
            "rate": sparkline([m.published / 60 for m in history], "published per second"),
            "backlog": sparkline([m.due_backlog for m in history], "due backlog"),
            "lag": sparkline([m.max_lag_s for m in history], "worst lag, seconds"),
            "dead": sparkline([m.dead for m in history], "jobs gone dead per minute"),
        },
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, *, session: PageSession, store: Store) -> Response:
    return _render(request, session, "overview.html", **await _overview(store, config(request)))


@router.get("/partials/overview", response_class=HTMLResponse)
async def overview_cards(request: Request, *, session: PageSession, store: Store) -> Response:
    """The overview's numbers and charts alone, fetched every few seconds by live.js."""
    overview = await _overview(store, config(request))
    return _render(request, session, "overview_cards.html", **overview)


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    *,
    session: PageSession,
    store: Store,
    state: str = "",
    topic: str = "",
    cursor: str = "",
) -> Response:
    wanted_state = state if state in STATES else None
    page = await store.list_jobs(
        JobFilter(
            state=wanted_state,
            topic=topic or None,
            limit=50,
            cursor=decode_cursor(cursor) if cursor else None,
        )
    )
    next_query = None
    if page.next_cursor:
        next_query = urlencode(
            {"state": state, "topic": topic, "cursor": encode_cursor(page.next_cursor)}
        )
    return _render(
        request, session, "jobs.html", jobs=page.jobs, state=state, topic=topic,
        next_query=next_query,
    )  # fmt: skip


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    request: Request, *, session: PageSession, store: Store, job_id: int
) -> Response:
    try:
        job = await store.get_job(job_id)
    except JobNotFound:
        page = _render(request, session, "missing.html", what=f"job {job_id}")
        page.status_code = 404
        return page
    return _render(request, session, "job.html", job=job)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    request: Request, *, session: PageSession, store: Store, job_id: int,
    csrf: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    _checked_action(request, session, csrf)
    try:
        await store.cancel_job(job_id)
    except (JobConflict, JobNotFound) as exc:
        return _back(f"/jobs/{job_id}", str(exc))
    return _back("/jobs", f"job {job_id} cancelled", state="pending")


@router.post("/jobs/{job_id}/reschedule")
async def reschedule_job(
    request: Request, *, session: PageSession, store: Store, job_id: int,
    csrf: Annotated[str, Form()] = "", when: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    _checked_action(request, session, csrf)
    try:
        fire_at, delay = _when(when)
        await store.reschedule_job(job_id, fire_at, delay)
    except ValueError as exc:
        return _back(f"/jobs/{job_id}", str(exc))
    except (JobConflict, JobNotFound) as exc:
        return _back(f"/jobs/{job_id}", str(exc))
    return _back(f"/jobs/{job_id}", "rescheduled")


def _when(text: str) -> tuple[datetime | None, float]:
    """`30s`, `1h30m` from now, or an ISO time with its offset."""
    text = text.strip()
    if not text:
        raise ValueError("give a delay (30s, 5m, 1h30m) or a time (2030-01-01T06:00:00+00:00)")
    try:
        return None, parse_duration(text).total_seconds()
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a delay (30s, 5m, 1h30m) nor a time (2030-01-01T06:00:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add one, such as +00:00")
    return moment, 0.0


@router.post("/jobs/{job_id}/requeue")
async def requeue_job(
    request: Request, *, session: PageSession, store: Store, job_id: int,
    csrf: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    _checked_action(request, session, csrf)
    try:
        await store.requeue_job(job_id)
    except (JobConflict, JobNotFound) as exc:
        return _back(f"/jobs/{job_id}", str(exc))
    return _back(f"/jobs/{job_id}", "requeued")


@router.get("/dead", response_class=HTMLResponse)
async def dead_page(
    request: Request, *, session: PageSession, store: Store, topic: str = "", cursor: str = ""
) -> Response:
    page = await store.list_jobs(
        JobFilter(
            state="dead", topic=topic or None, limit=50,
            cursor=decode_cursor(cursor) if cursor else None,
        )
    )  # fmt: skip
    next_query = None
    if page.next_cursor:
        next_query = urlencode({"topic": topic, "cursor": encode_cursor(page.next_cursor)})
    return _render(
        request, session, "dead.html", jobs=page.jobs, topic=topic, next_query=next_query
    )


@router.post("/dead/requeue")
async def requeue_dead(
    request: Request, *, session: PageSession, store: Store,
    csrf: Annotated[str, Form()] = "", topic: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    _checked_action(request, session, csrf)
    requeued = await store.requeue_dead(DeadFilter(topic=topic or None))
    return _back("/dead", f"{len(requeued)} dead jobs requeued", topic=topic)


@router.get("/schedules", response_class=HTMLResponse)
async def schedules_page(request: Request, *, session: PageSession, store: Store) -> Response:
    schedules = [(s, next_occurrences(s)) for s in await store.list_schedules()]
    return _render(request, session, "schedules.html", schedules=schedules)


@router.get("/pauses", response_class=HTMLResponse)
async def pauses_page(request: Request, *, session: PageSession, store: Store) -> Response:
    return _render(request, session, "pauses.html", pauses=await store.list_pauses())


@router.post("/pauses")
async def pause(
    request: Request, *, session: PageSession, store: Store,
    csrf: Annotated[str, Form()] = "", filter: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    _checked_action(request, session, csrf)
    topic_filter = filter.strip()
    try:
        check_filter(topic_filter)
        _, created = await store.pause(topic_filter, reason.strip() or None)
    except (ValueError, InvalidFilter) as exc:
        return _back("/pauses", str(exc))
    return _back("/pauses", f"{topic_filter} paused" if created else f"{topic_filter} was paused")


@router.post("/pauses/resume")
async def resume(
    request: Request, *, session: PageSession, store: Store,
    csrf: Annotated[str, Form()] = "", filter: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    _checked_action(request, session, csrf)
    try:
        await store.resume(filter)
    except PauseNotFound as exc:
        return _back("/pauses", str(exc))
    return _back("/pauses", f"{filter} resumed")
