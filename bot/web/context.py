"""What every handler reaches through ``request.app[CONTEXT]``."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
from aiohttp import web

from bot.settings.web import WebSettings
from bot.web.deps import WebDeps
from bot.web.sampler import Sampler
from bot.web.security import RateLimit, Signer


@dataclass
class Context:
    """What every request handler of the dashboard shares (deps, signer, limits, templates)."""

    deps: WebDeps
    signer: Signer
    limiter: RateLimit
    sampler: Sampler
    env: jinja2.Environment

    @property
    def web(self) -> WebSettings:
        return self.deps.settings.web

    def may_log_in(self, actor: str) -> bool:
        """Admins (as configured now: removing one ends their sessions and links), and the
        password's operator while a password is configured."""
        if actor == "web:password":
            return self.web.password_hash is not None
        return self.deps.settings.is_admin(actor)


CONTEXT = web.AppKey("context", Context)
