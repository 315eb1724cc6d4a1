"""`jobpub web`: serve the app with uvicorn until SIGTERM or SIGINT."""

from __future__ import annotations

import structlog
import uvicorn

from jobpub.web.app import create_app
from jobpub.web.config import WebConfig, is_loopback

log = structlog.get_logger("jobpub.web")


def serve(config: WebConfig) -> int:
    """Run the server (the caller has checked `bind_refusal`); 0 after a clean stop."""
    if config.open_access:
        log.warning(
            "web_without_token",
            host=config.host,
            reason="JOBPUB_WEB_TOKEN is not set: no authentication, 127.0.0.1 only",
        )
    log.info(
        "web_starting",
        url=f"http://{config.host}:{config.port}/",
        api_docs=f"http://{config.host}:{config.port}/api/docs",
        readonly_token=config.readonly_token is not None,
        local_only=is_loopback(config.host),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.host,
            port=config.port,
            log_config=None,  # jobpub's structlog setup, not uvicorn's own
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    server.run()
    return 0 if server.started else 1
