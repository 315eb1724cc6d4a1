"""Errors as RFC 9457 problem details: `type`, `title`, `status`, `detail` in JSON."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobpub.db.pauses import InvalidFilter
from jobpub.db.producer import JobConflict, JobNotFound, Refused
from jobpub.db.web import PauseNotFound, ScheduleConflict, ScheduleNotFound
from jobpub.errors import DatabaseError, DatabaseUnavailable

PROBLEM_JSON = "application/problem+json"
# `type` names the kind of problem: a URN (no page to dereference; RFC 9457, 3.1.1 allows
# any URI), or "about:blank" (4.2.1) where the status says it all.
TYPE_BASE = "urn:jobpub:problem:"


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        kind: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    kind: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": kind if kind == "about:blank" else TYPE_BASE + kind,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(
        body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


def _field(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "path")]
    return ".".join(parts) or "request"


def validation_messages(exc: RequestValidationError) -> list[dict[str, str]]:
    """Each invalid field with a message a person can act on."""
    errors = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a field of this request"
        errors.append({"field": _field(tuple(error.get("loc", ()))), "message": message})
    return errors


def install(app: FastAPI) -> None:
    """Answer every error of the API as a problem document."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.kind, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_messages(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(400, detail, "invalid-request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(JobNotFound)
    @app.exception_handler(ScheduleNotFound)
    @app.exception_handler(PauseNotFound)
    async def _not_found(_: Request, exc: DatabaseError) -> JSONResponse:
        return problem_response(404, str(exc), "not-found")

    @app.exception_handler(JobConflict)
    async def _job_conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return problem_response(409, str(exc), "job-not-pending", state=exc.state)

    @app.exception_handler(ScheduleConflict)
    async def _schedule_conflict(_: Request, exc: ScheduleConflict) -> JSONResponse:
        return problem_response(409, str(exc), "schedule-exists")

    @app.exception_handler(InvalidFilter)
    async def _invalid_filter(_: Request, exc: InvalidFilter) -> JSONResponse:
        errors = [{"field": "filter", "message": str(exc)}]
        return problem_response(400, f"filter: {exc}", "invalid-request", errors=errors)

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:
        return problem_response(400, str(exc), "refused-by-database")

    @app.exception_handler(DatabaseUnavailable)
    async def _unavailable(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return problem_response(503, str(exc), "database-unavailable")
