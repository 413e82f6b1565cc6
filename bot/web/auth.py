"""Who may see the dashboard: one-time login links, an optional password, signed session
cookies, CSRF on every POST, and the guard in front of every page but ``/healthz``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from bot.web.context import CONTEXT, Context
from bot.web.passwords import verify_password
from bot.web.views import html

SESSION_COOKIE = "selftune_session"
FLASH_COOKIE = "selftune_flash"
PASSWORD_ACTOR = "web:password"  # as Context.may_log_in knows it
PUBLIC = frozenset({"/healthz", "/metrics", "/login", "/login/link"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Session:
    """A logged-in operator: their user key (or ``web:password``) and the session's CSRF."""

    actor: str
    csrf: str


def session_of(request: web.Request) -> Session | None:
    """The request's valid session, or None (no cookie, forged, expired, admin removed)."""
    ctx = request.app[CONTEXT]
    data = ctx.signer.load("session", request.cookies.get(SESSION_COOKIE))
    if data is None:
        return None
    actor, sid = data.get("u"), data.get("s")
    if not isinstance(actor, str) or not isinstance(sid, str) or not ctx.may_log_in(actor):
        return None
    return Session(actor, ctx.signer.csrf(sid))


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No session: pages redirect to /login, actions get 401; a POST without its session's
    CSRF token gets 403."""
    if request.path in PUBLIC or request.path.startswith("/static/"):
        return await handler(request)
    session = session_of(request)
    if session is None:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther(f"/login?next={request.rel_url}")
        raise web.HTTPUnauthorized(text="Log in first.")
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        sent = str(form.get("csrf") or request.headers.get("X-CSRF-Token", ""))
        if not secrets.compare_digest(sent, session.csrf):
            raise web.HTTPForbidden(text="Missing or wrong CSRF token: reload the page.")
    return await handler(request)


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _next(raw: object) -> str:
    target = str(raw or "/")
    # Only a path of this site: "//evil.example" or "https://…" would leave it.
    return target if target.startswith("/") and not target.startswith("//") else "/"


def start_session(ctx: Context, response: web.StreamResponse, actor: str) -> None:
    """Set the signed session cookie: HttpOnly, SameSite=Strict, Secure behind https."""
    ttl = ctx.web.session_ttl_s
    token = ctx.signer.sign("session", {"u": actor, "s": secrets.token_urlsafe(16)}, ttl)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=ttl,
        httponly=True,
        samesite="Strict",
        secure=ctx.web.secure_cookies,
        path="/",
    )


async def login_page(request: web.Request) -> web.StreamResponse:
    """The login page: a password form (when one is configured) and how to get a link."""
    ctx = request.app[CONTEXT]
    return _login_form(ctx, _next(request.query.get("next")))


def _login_form(ctx: Context, target: str, error: str = "", status: int = 200) -> web.Response:
    has_password = ctx.web.password_hash is not None
    return html(
        ctx.env,
        "login.html",
        status=status,
        next=target,
        error=error,
        has_password=has_password,
        session=None,
        flash=None,
    )


async def password_login(request: web.Request) -> web.StreamResponse:
    """Log in with the configured password (rate-limited per client address)."""
    ctx, client = request.app[CONTEXT], _client(request)
    form = await request.post()
    target = _next(form.get("next"))
    if not ctx.limiter.allowed(client):
        return _login_form(ctx, target, "Too many attempts: wait a minute.", 429)
    stored = ctx.web.password_hash
    password = str(form.get("password") or "")
    ok = stored is not None and await asyncio.to_thread(
        verify_password, password, stored.get_secret_value()
    )
    if not ok:
        ctx.limiter.failed(client)
        return _login_form(ctx, target, "Wrong password.", 401)
    response = web.HTTPSeeOther(target)
    start_session(ctx, response, PASSWORD_ACTOR)
    raise response


async def link_page(request: web.Request) -> web.StreamResponse:
    """A link opens a page with a button, and only that POST logs in: a chat app that fetches
    the link for a preview must not use it up."""
    ctx = request.app[CONTEXT]
    token = request.query.get("t", "")
    data = ctx.signer.load("login", token)
    if data is None or await ctx.deps.repo.dashboard.login_nonce_used(str(data.get("n"))):
        return _link_refused(ctx)
    return html(ctx.env, "link.html", token=token, actor=data.get("u"), session=None, flash=None)


def _link_refused(ctx: Context) -> web.Response:
    error = "This login link is invalid, expired or used. Ask the bot for a new one: /dashboard."
    return _login_form(ctx, "/", error, 403)


async def link_login(request: web.Request) -> web.StreamResponse:
    """Spend a one-time login link (on the confirm page's POST) and start a session."""
    ctx, client = request.app[CONTEXT], _client(request)
    if not ctx.limiter.allowed(client):
        return _login_form(ctx, "/", "Too many attempts: wait a minute.", 429)
    form = await request.post()
    data = ctx.signer.load("login", str(form.get("t") or ""))
    actor, nonce = (data or {}).get("u"), (data or {}).get("n")
    if data is None or not isinstance(actor, str) or not ctx.may_log_in(actor):
        ctx.limiter.failed(client)
        return _link_refused(ctx)
    expires = datetime.fromtimestamp(float(data["exp"]), UTC)
    if not await ctx.deps.repo.dashboard.use_login_nonce(str(nonce), actor, expires):
        ctx.limiter.failed(client)
        return _link_refused(ctx)
    response = web.HTTPSeeOther("/")
    start_session(ctx, response, actor)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:  # noqa: ARG001 - a handler
    """End the session: the cookie is deleted."""
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def set_flash(ctx: Context, response: web.StreamResponse, text: str, error: bool = False) -> None:
    """A one-shot message for the next page (signed: a link cannot plant one)."""
    token = ctx.signer.sign("flash", {"m": text[:2000], "e": error}, 120)
    response.set_cookie(FLASH_COOKIE, token, httponly=True, samesite="Strict", path="/")


def read_flash(request: web.Request) -> dict[str, object] | None:
    """The message set by the last action, if any (the page deletes its cookie)."""
    return request.app[CONTEXT].signer.load("flash", request.cookies.get(FLASH_COOKIE))
