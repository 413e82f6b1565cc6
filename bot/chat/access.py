"""Who the bot answers: the ``[access]`` lists, the users blocked in the database, and the one
short notice a refused user gets.

A refused user (blocked in the configuration or by ``/block``/the dashboard, not on
``access.allow_users``, in a private chat with ``access.private_chats`` off) or a group not on
``access.allow_chats`` hears one notice; after it, their messages get nothing at all: the
adapters ask ``silenced`` (synchronous, from memory) before answering. The notice is
remembered per process: after a restart a refused user hears it once more.

Their messages are not stored (the bot will never answer or train on them, so keeping their
words would only keep personal data for nothing) and their 👍/👎 presses are refused (a
database block also keeps their older ratings out of training: ``repo.training.rated``).

Blocks made elsewhere (the dashboard) are seen at once by the next message's check; an unblock
made there reaches ``silenced`` within ``refresh_s`` while anyone chats (the blocked set is
re-read then), or at the latest when the user's next message finds the memory stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.settings import Settings
from bot.types import Incoming
from storage.repository import Repository

BLOCKED = "You are blocked from using this bot."
NOT_ALLOWED = "This bot answers only the users its admins allow; your user key is {user}."
NO_PRIVATE = "I do not answer in private chats here; talk to me where my admins added me."
CHAT_NOT_ALLOWED = "I am not enabled in this chat ({chat}); an admin can allow it."


@dataclass(frozen=True)
class Refusal:
    """Why a message is not answered: ``key`` says what the one notice is remembered by."""

    key: str
    notice: str


class Access:
    """The access check of the chat (one instance per ChatService)."""

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        *,
        refresh_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._rules = settings.access
        self._repo = repo
        self._refresh_s = refresh_s
        self._clock = clock
        self._blocked: set[str] = set()  # user keys blocked in the database, as last read
        self._read_at = float("-inf")  # when ``_blocked`` was last read whole
        self._noticed: set[str] = set()  # refusal keys that got their notice

    def _user_refusal(self, user: str, blocked: bool) -> Refusal | None:
        """Refused for who they are (configuration or database), wherever they write."""
        if blocked or user in self._rules.block_users:
            return Refusal(f"user:{user}", BLOCKED)
        if self._rules.allow_users and user not in self._rules.allow_users:
            return Refusal(f"user:{user}", NOT_ALLOWED.format(user=user))
        return None

    def _refusal(self, incoming: Incoming, blocked: bool) -> Refusal | None:
        user, rules = incoming.user_key, self._rules
        if incoming.is_admin or self._settings.is_admin(user):
            return None
        if (refused := self._user_refusal(user, blocked)) is not None:
            return refused
        if incoming.is_private and not rules.private_chats:
            return Refusal(f"private:{user}", NO_PRIVATE)
        listed = not rules.allow_chats or _listed(incoming, rules.allow_chats)
        if not incoming.is_private and not listed:
            chat = incoming.chat_key
            return Refusal(f"chat:{chat}", CHAT_NOT_ALLOWED.format(chat=chat))
        return None

    def silenced(self, incoming: Incoming) -> bool:
        """Refused and already told so: the adapter answers nothing (from memory, no await).
        A database block is trusted only from a fresh read; otherwise the message goes on to
        ``check``, which reads the database (and the notice is said again)."""
        fresh = self._clock() - self._read_at < self._refresh_s
        refusal = self._refusal(incoming, fresh and incoming.user_key in self._blocked)
        return refusal is not None and refusal.key in self._noticed

    async def check(self, incoming: Incoming) -> Refusal | None:
        """The refusal of this message, if any (reads the user's block in the database); a
        refusal found here counts as told: ``silenced`` is true for the next message."""
        await self._refresh_if_stale()
        blocked = await self._repo.curation.is_blocked(incoming.user_key)
        self.remember(incoming.user_key, blocked)
        refusal = self._refusal(incoming, blocked)
        if refusal is not None:
            self._noticed.add(refusal.key)
        return refusal

    async def rater_refused(self, user_key: str) -> str | None:
        """Why ``user_key``'s 👍/👎 is refused (their notice), or None when it counts."""
        if self._settings.is_admin(user_key):
            return None
        blocked = await self._repo.curation.is_blocked(user_key)
        self.remember(user_key, blocked)
        refusal = self._user_refusal(user_key, blocked)
        return refusal.notice if refusal is not None else None

    def remember(self, user_key: str, blocked: bool) -> None:
        """Record a block or unblock known now (``/block``, ``/unblock``, a fresh read)."""
        if blocked:
            self._blocked.add(user_key)
        elif user_key in self._blocked:
            self._blocked.discard(user_key)
            self._noticed.discard(f"user:{user_key}")  # blocked again later: told again

    def config_blocked(self, user_key: str) -> bool:
        """Blocked by ``access.block_users`` (``/unblock`` cannot lift that)."""
        return user_key in self._rules.block_users

    async def _refresh_if_stale(self) -> None:
        if self._clock() - self._read_at < self._refresh_s:
            return
        controls = await self._repo.curation.controls()
        blocked = {key for key, control in controls.items() if control.blocked}
        for key in self._blocked - blocked:
            self._noticed.discard(f"user:{key}")
        self._blocked, self._read_at = blocked, self._clock()


def _listed(incoming: Incoming, chats: list[str]) -> bool:
    """The chat, or the chat a thread belongs to, is on the list."""
    return incoming.chat_key in chats or f"{incoming.platform}:{incoming.chat_id}" in chats
