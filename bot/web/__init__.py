"""The operator's web dashboard, served by the bot's own process and event loop.

aiohttp.web, not Starlette: discord.py already brings aiohttp, and its ``AppRunner`` starts a
server inside the running loop with no second server package (Starlette would need uvicorn).

- ``server.py``: ``Dashboard`` (build, ``start``/``stop``, ``issue_login_link``) and
  ``start_dashboard``
- ``deps.py``: ``WebDeps``, what the pages need from the core (protocols, no imports of it)
- ``security.py``: signed tokens (links, sessions, flashes), the secret key, CSRF, rate limit
- ``passwords.py``: scrypt/pbkdf2 hashes (``python -m bot.web.passwords`` prints one)
- ``auth.py``: the login pages and the middleware that guards everything but ``/healthz``
- ``pages.py`` / ``actions.py``: the pages (GET) / what they change (POST, CSRF-checked)
- ``views.py``: rendering (Jinja2, autoescaped), lineage tree; ``charts.py``: inline SVG
- ``ops.py``: ``/healthz`` and ``/metrics``; ``sampler.py``: tokens/s and the live loss curve
"""

from bot.web.deps import GeneratorSnapshot, WebDeps
from bot.web.server import Dashboard, start_dashboard

__all__ = ["Dashboard", "GeneratorSnapshot", "WebDeps", "start_dashboard"]
