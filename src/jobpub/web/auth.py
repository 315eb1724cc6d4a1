"""Who may do what: Bearer tokens for the API, a session cookie and CSRF token for pages.

Two roles: `admin` (JOBPUB_WEB_TOKEN, or anyone when no token is set and the server is
local) and `readonly` (JOBPUB_WEB_READONLY_TOKEN: GET only). A session cookie is signed
with a key derived from the tokens, so it survives a restart, works across several web
processes, and every session ends when a token changes. The CSRF token of a session is
derived from it with the same key: nothing is stored on the server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from jobpub.web.config import WebConfig

Role = Literal["admin", "readonly"]
SESSION_COOKIE = "jobpub_session"
SESSION_MAX_AGE_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    role: Role


class Authenticator:
    def __init__(self, config: WebConfig) -> None:
        self._token = config.token
        self._readonly_token = config.readonly_token
        secret = f"{config.token}\0{config.readonly_token}" if config.token else None
        # Open access has no secret to derive from: a key of this process's own.
        material = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"jobpub-web-session\0" + material).digest()

    @property
    def open_access(self) -> bool:
        return self._token is None

    def role_of_token(self, token: str) -> Role | None:
        """The role a presented token grants; compared in constant time."""
        if self._token is not None and hmac.compare_digest(token.encode(), self._token.encode()):
            return "admin"
        if self._readonly_token is not None and hmac.compare_digest(
            token.encode(), self._readonly_token.encode()
        ):
            return "readonly"
        return None

    def new_session(self, role: Role) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), role)
        return session, f"{session.session_id}.{role}.{self._sign('session', session)}"

    def session_of_cookie(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        session_id, _, rest = cookie.partition(".")
        role, _, signature = rest.partition(".")
        if role not in ("admin", "readonly"):
            return None
        session = Session(session_id, role)  # type: ignore[arg-type]  # checked above
        if not hmac.compare_digest(signature, self._sign("session", session)):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._sign("csrf", session)

    def csrf_valid(self, session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf_token(session))

    def _sign(self, purpose: str, session: Session) -> str:
        message = f"{purpose}\0{session.session_id}\0{session.role}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()
