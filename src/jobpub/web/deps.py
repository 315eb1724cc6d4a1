"""What every request reaches through the app: the store, the config, the caller's role."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobpub.db.web import WebStore
from jobpub.web.auth import Authenticator, Role
from jobpub.web.config import WebConfig
from jobpub.web.problems import Problem

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False, description="JOBPUB_WEB_TOKEN, or the read-only token")


def store(request: Request) -> WebStore:
    found: WebStore = request.app.state.store
    return found


def config(request: Request) -> WebConfig:
    found: WebConfig = request.app.state.config
    return found


def authenticator(request: Request) -> Authenticator:
    found: Authenticator = request.app.state.authenticator
    return found


def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Role:
    """The caller's role from `Authorization: Bearer`; 401 without one, 403 to write read-only."""
    auth = authenticator(request)
    if auth.open_access:
        return "admin"
    challenge = {"WWW-Authenticate": "Bearer"}  # RFC 6750: a 401 names the scheme
    if credentials is None:
        raise Problem(
            401, "send Authorization: Bearer <JOBPUB_WEB_TOKEN>", "unauthorized", challenge
        )
    role = auth.role_of_token(credentials.credentials)
    if role is None:
        raise Problem(
            401, "the Bearer token is not one this server accepts", "unauthorized", challenge
        )
    if role == "readonly" and request.method not in READ_METHODS:
        raise Problem(403, "the read-only token may only GET", "forbidden")
    return role


Store = Annotated[WebStore, Depends(store)]
Config = Annotated[WebConfig, Depends(config)]
