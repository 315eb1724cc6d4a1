"""The web application: the API, the dashboard and their assets, built from a WebConfig."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from jobpub import __version__
from jobpub.db.web import WebStore
from jobpub.web import api, dashboard, problems
from jobpub.web.auth import Authenticator
from jobpub.web.config import WebConfig

STATIC = Path(__file__).parent / "static"
# Swagger UI's files from the swagger-ui-bundle wheel (Apache-2.0), served by jobpub
# itself: FastAPI's docs page would load them from a CDN.
SWAGGER_UI = Path(swagger_ui_bundle.swagger_ui_path)


def create_app(config: WebConfig, store: WebStore | None = None) -> FastAPI:
    """The ASGI app; it opens the store's pool at startup and closes it at shutdown."""
    store = store or WebStore(config.database_url)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.open()
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="jobpub",
        version=__version__,
        summary="Durable delayed publish for MQTT: the queue's REST API",
        openapi_url="/api/openapi.json",
        docs_url=None,  # served below, from local assets
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.store = store
    app.state.authenticator = Authenticator(config)
    problems.install(app)

    @app.exception_handler(dashboard.LoginRequired)
    async def _login_first(_: Request, __: dashboard.LoginRequired) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/api/docs/assets", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        """For the container's health check: the server answers and reaches the database."""
        await store.check()  # DatabaseUnavailable: a 503 problem document
        return PlainTextResponse("ok\n")

    @app.get("/api/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="jobpub API",
            swagger_js_url="/api/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/api/docs/assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    return app
