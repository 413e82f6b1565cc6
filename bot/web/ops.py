"""``/healthz`` (no session: a load balancer asks it) and ``/metrics`` (a session, or the
configured bearer token for a scraper)."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

import bot.metrics as metrics
from bot.web.auth import session_of
from bot.web.context import CONTEXT

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.StreamResponse:
    """200 when the database answers, the generator is loaded and every platform is
    connected; 503 otherwise. Names and booleans only: nothing secret."""
    deps = request.app[CONTEXT].deps
    try:
        await deps.repo.dashboard.ping()
        database = True
    except Exception:
        log.warning("health check: the database does not answer", exc_info=True)
        database = False
    generator = deps.generator().loaded
    platforms = {name: bool(up) for name, up in deps.adapters().items()}
    ok = database and generator and all(platforms.values())
    body = {
        "status": "ok" if ok else "degraded",
        "database": database,
        "generator": generator,
        "adapters": platforms,
    }
    return web.json_response(body, status=200 if ok else 503)


def _bearer_ok(request: web.Request) -> bool:
    token = request.app[CONTEXT].web.metrics_token
    sent = request.headers.get("Authorization", "")
    return token is not None and secrets.compare_digest(sent, f"Bearer {token.get_secret_value()}")


async def prometheus(request: web.Request) -> web.StreamResponse:
    """``/metrics`` in Prometheus' text format (a session or the bearer token)."""
    if session_of(request) is None and not _bearer_ok(request):
        raise web.HTTPUnauthorized(text="Log in, or send the configured bearer token.")
    deps = request.app[CONTEXT].deps
    snapshot = deps.generator()
    metrics.QUEUE_DEPTH.set(snapshot.queued)
    metrics.RUNNING_SEQUENCES.set(snapshot.running)
    metrics.TRAINING_RUNNING.set(1 if deps.training.running else 0)
    for platform, connected in deps.adapters().items():
        metrics.PLATFORM_CONNECTED.labels(platform).set(1 if connected else 0)
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})
