"""A serving process's watch on the database: a new active adapter version (a trainer worker
released one, or /rollback or /activate ran in another process) is swapped in without waiting
for the next reply, and the result of a queued run is told to whoever asked for it (once, by
whichever serving process notices first).

Where a queued run's result goes is stored with the run as an address: ``chat:<chat key>`` (the
admin's private chat), ``private:<user key>`` (a DM the platform sends), ``group:<chat key>``
(a group, told only that the run ended) or ``schedule`` (``schedule.notify_chats``). Only a
process with an adapter for that platform takes the telling; a run nobody can be told about
(its chat's platform is served by no process) stays untold, and the newest runs are looked at.
"""

from __future__ import annotations

import logging

from bot.learning.periodic import Periodic
from bot.learning.versions import AdapterVersions
from bot.outbox import Outbox
from bot.settings import Settings
from storage.repository import Repository
from storage.training_runs import Ended

log = logging.getLogger(__name__)

SCHEDULE = "schedule"


def chat_address(chat_key: str) -> str:
    """Tell the result in full in the chat ``chat_key`` (the admin's private chat)."""
    return f"chat:{chat_key}"


def private_address(user_key: str) -> str:
    """Tell the result in full to ``user_key`` privately (a DM)."""
    return f"private:{user_key}"


def group_address(chat_key: str) -> str:
    """Tell the group ``chat_key`` only that the run ended (admin output stays private)."""
    return f"group:{chat_key}"


class Watcher:
    """Polls every ``training.watch_interval_s`` (0: never) while the process serves."""

    def __init__(
        self, settings: Settings, repo: Repository, versions: AdapterVersions, outbox: Outbox
    ) -> None:
        self._settings = settings
        self._repo = repo
        self._versions = versions
        self._outbox = outbox
        self._periodic = Periodic(
            "version-watcher", lambda: self._settings.training.watch_interval_s, self.tick
        )

    def start(self) -> None:
        if self._settings.training.watch_interval_s > 0:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def tick(self) -> None:
        """One look: swap in the active version if it changed; tell ended queued runs."""
        await self._versions.sync()  # the same swap path as every reply takes
        for ended in await self._repo.runs.ended_unannounced():
            # Only a process that can deliver takes the telling (a Telegram-only process
            # leaves a Discord admin's result to a Discord one).
            if self._reaches(ended.notify_to) and await self._repo.runs.announce(ended.run.id):
                try:
                    await self._tell(ended)
                except BaseException:  # not sent: give the telling back for the next look
                    await self._repo.runs.announce(ended.run.id, told=False)
                    raise

    def _reaches(self, address: str) -> bool:
        kind, _, key = address.partition(":")
        if kind == "private":
            return self._outbox.private_notifier(key) is not None
        if kind == SCHEDULE:
            return any(self._outbox.reaches(chat) for chat in self._settings.schedule.notify_chats)
        return self._outbox.reaches(key)

    async def _tell(self, ended: Ended) -> None:
        run = ended.run
        kind, _, key = ended.notify_to.partition(":")
        text = run.message
        if not text.startswith(f"Training run #{run.id}"):
            text = f"Training run #{run.id}: {text}"
        if kind == "chat":
            await self._outbox.send(key, text)
        elif kind == "private" and (notify := self._outbox.private_notifier(key)) is not None:
            await notify(text)
        elif kind == "group":
            brief = (
                f"Training run #{run.id} ended ({run.status}). "
                "Details for admins: /status, /adapters."
            )
            await self._outbox.send(key, brief)
        elif kind == SCHEDULE:
            for chat_key in self._settings.schedule.notify_chats:
                await self._outbox.send(chat_key, text)
        else:
            log.info("run #%d ended; nobody to tell at %r: %s", run.id, ended.notify_to, text)
