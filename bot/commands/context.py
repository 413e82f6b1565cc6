"""What command handlers may use: an explicit context the composition root builds once.

Handlers take it instead of reaching through the ChatService (``bot/app.py``'s ``build_core``
fills it); the ChatService only hands parsed commands to the router.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bot.chat.access import Access
from bot.generation import Generator
from bot.learning.ab import ABTesting
from bot.learning.finetune import Finetuner
from bot.learning.versions import AdapterVersions
from bot.outbox import Outbox
from bot.settings import Settings
from bot.types import Incoming, Reply
from storage.repository import Repository


@dataclass(frozen=True)
class CommandContext:
    """The services the commands work with, and the tasks they leave running."""

    settings: Settings
    repo: Repository
    generator: Generator  # its model name and context window, for /status
    versions: AdapterVersions
    finetuner: Finetuner
    ab: ABTesting
    outbox: Outbox
    # Tasks a command started and nobody awaits (kept referenced so they are not collected).
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # The dashboard's one-time login link for an admin's user key (None: the dashboard is off).
    login_link: Callable[[str], str] | None = None
    access: Access | None = None  # the chat's access check: /block and /unblock update it

    def is_admin(self, incoming: Incoming) -> bool:
        """Configured admin user keys, or a platform-vouched admin (``incoming.is_admin``)."""
        return incoming.is_admin or self.settings.is_admin(incoming.user_key)


Handler = Callable[[CommandContext, Incoming, str], Awaitable[Reply]]
"""What answers one command: (context, the message, its argument text) → one Reply."""
