"""The dashboard's aiohttp application and its lifecycle in the bot's event loop."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from bot.web import actions, auth, ops, pages
from bot.web.context import CONTEXT, Context
from bot.web.deps import WebDeps
from bot.web.sampler import Sampler
from bot.web.security import RateLimit, Signer, load_key
from bot.web.views import STATIC, environment

log = logging.getLogger(__name__)

# Inline SVG needs no script; the login token must not leak in a Referer header.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@web.middleware
async def _secure_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects and refusals get the headers too
        exc.headers.update(_HEADERS)
        raise
    response.headers.update(_HEADERS)
    return response


_PAGES = {
    "/": pages.overview,
    "/chats": pages.chats,
    "/chats/{key}": pages.transcript,
    "/ratings": pages.ratings,
    "/users": pages.users,
    "/adapters": pages.adapters,
    "/runs": pages.runs,
    "/runs/{run_id}": pages.run,
    "/stats": pages.stats,
    "/audit": pages.audit,
}


def build_app(ctx: Context) -> web.Application:
    """The application: pages, actions, login, operations, static files."""
    app = web.Application(middlewares=[_secure_headers, auth.guard], client_max_size=64 * 1024)
    app[CONTEXT] = ctx
    for path, page in _PAGES.items():
        app.router.add_get(path, page)
    for path, action in actions.ROUTES.items():
        app.router.add_post(path, actions.handler(action))
    app.router.add_get("/login", auth.login_page)
    app.router.add_post("/login", auth.password_login)
    app.router.add_get("/login/link", auth.link_page)
    app.router.add_post("/login/link", auth.link_login)
    app.router.add_post("/logout", auth.logout)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/metrics", ops.prometheus)
    app.router.add_static("/static", STATIC)
    return app


class Dashboard:
    """The web dashboard of one serving process: ``start`` it in the bot's loop, ``stop`` it
    at shutdown; ``issue_login_link`` makes the one-time link the /dashboard command sends."""

    def __init__(self, deps: WebDeps) -> None:
        settings = deps.settings
        secret = settings.web.secret_key
        key = load_key(
            secret.get_secret_value() if secret else None, deps.data_dir or settings.data_dir
        )
        sampler = Sampler(
            deps.generator,
            lambda: deps.training.progress,
            self._running_run,
        )
        self.context = Context(
            deps,
            Signer(key),
            RateLimit(settings.web.login_attempts_per_minute),
            sampler,
            environment(),
        )
        self.app = build_app(self.context)
        self._runner: web.AppRunner | None = None

    async def _running_run(self) -> int | None:
        running = await self.context.deps.repo.runs.running()
        return running.id if running else None

    @property
    def base_url(self) -> str:
        web_settings = self.context.web
        return web_settings.public_url or f"http://{web_settings.listen}:{web_settings.port}"

    def issue_login_link(self, user_key: str) -> str:
        """A signed, expiring, single-use login link for an admin (the /dashboard command
        sends it privately). Raises PermissionError for a key that is not an admin."""
        if not self.context.deps.settings.is_admin(user_key):
            raise PermissionError(f"{user_key} is not an admin")
        data = {"u": user_key, "n": secrets.token_urlsafe(16)}
        token = self.context.signer.sign("login", data, self.context.web.link_ttl_s)
        return f"{self.base_url}/login/link?t={quote(token)}"

    async def start(self) -> web.AppRunner:
        """Serve on ``web.listen``:``web.port`` in the running loop."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.context.web.listen, self.context.web.port)
        await site.start()
        self._runner = runner
        self.context.sampler.start()
        log.info("dashboard on %s", self.base_url)
        return runner

    async def stop(self) -> None:
        await self.context.sampler.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_dashboard(deps: WebDeps) -> Dashboard:
    """Build and start the dashboard; ``await dashboard.stop()`` at shutdown."""
    dashboard = Dashboard(deps)
    await dashboard.start()
    return dashboard
