"""Delivery records: platform updates stored before the platform is told they arrived.

A Telegram update is confirmed (the next ``getUpdates`` offset, or the webhook's 200) only
after ``receive`` stored it; it is marked ``done`` once handled. At the next start the ones not
done, which a crash interrupted, are handled again. The primary key (platform, key) drops an
update delivered twice, also when two serving processes receive it at once: exactly one stores
it, and that one handles it. An update that belongs to a chat records the chat's key; a chat's
updates are handled in key order by whichever process holds the chat's turn (``chat_turn``,
decided by ``storage.coordination``). ``answer_to`` finds the stored reply of a message handled
before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.types import Reply, ReplyKind
from storage.coordination import Coordination, LocalCoordination
from storage.models import Delivery, Message, utcnow
from storage.models import Exchange as ExchangeRow

KEEP_DONE = timedelta(days=2)  # long past any redelivery; then pruned at start-up


class Pending(NamedTuple):
    """An update received and not yet handled: its key, the raw update, the reply's message."""

    key: str
    payload: dict[str, Any]
    reply_ref: str | None


class Deliveries:
    """The delivery records, one short transaction per call."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        coordination: Coordination | None = None,
    ) -> None:
        self._sessions = sessions
        self._coordination = coordination or LocalCoordination()

    @property
    def shared(self) -> bool:
        """Whether other serving processes take updates from this log too (PostgreSQL)."""
        return self._coordination.shared

    async def receive(
        self,
        platform: str,
        updates: Sequence[tuple[str, dict[str, Any]]],
        chats: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Store updates (one transaction); returns the keys that were new, in order (an
        update stored before, e.g. a webhook POST sent again, is dropped). ``chats`` gives
        the chat key of the updates that belong to a chat."""
        if not updates:
            return []
        keys = [key for key, _ in updates]
        async with self._sessions.begin() as session:
            known = set(
                await session.scalars(
                    select(Delivery.key).where(
                        Delivery.platform == platform, Delivery.key.in_(keys)
                    )
                )
            )
            fresh = [(key, raw) for key, raw in dict(updates).items() if key not in known]
            chat = chats or {}
            session.add_all(
                Delivery(platform=platform, key=k, payload=raw, chat_key=chat.get(k))
                for k, raw in fresh
            )
        return [key for key, _ in fresh]

    async def receive_one(
        self, platform: str, key: str, payload: dict[str, Any], chat_key: str | None = None
    ) -> bool:
        """Store one update; False if it was stored before (also when a concurrent delivery
        of the same update won the race: the primary key refuses the second)."""
        chats = {key: chat_key} if chat_key is not None else None
        try:
            return bool(await self.receive(platform, [(key, payload)], chats))
        except IntegrityError:
            return False

    def chat_turn(
        self, platform: str, chat_key: str
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to take the chat's turn: while held, no other process handles its updates."""
        return self._coordination.chat_turn(f"{platform}/{chat_key}")

    async def pending_chats(self, platform: str, older_than: timedelta | None = None) -> list[str]:
        """The chats with updates not handled yet. With ``older_than``: only those received
        before that long ago whose turn no process holds (the sweep for chats a crashed
        process left behind)."""
        query = select(Delivery.chat_key).where(
            Delivery.platform == platform,
            Delivery.done.is_(False),
            Delivery.chat_key.is_not(None),
        )
        if older_than is not None:
            query = query.where(Delivery.received_at < utcnow() - older_than)
        async with self._sessions() as session:
            chats = [str(chat) for chat in await session.scalars(query.group_by(Delivery.chat_key))]
        if older_than is None:
            return chats
        free = set(await self._coordination.unheld([f"{platform}/{c}" for c in chats]))
        return [c for c in chats if f"{platform}/{c}" in free]

    async def pending_in_chat(self, platform: str, chat_key: str) -> list[Pending]:
        """A chat's updates not handled yet, in the platform's order (numeric keys)."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Delivery)
                .where(
                    Delivery.platform == platform,
                    Delivery.chat_key == chat_key,
                    Delivery.done.is_(False),
                )
                .order_by(func.length(Delivery.key), Delivery.key)
            )
            return [Pending(r.key, r.payload, r.reply_ref) for r in rows]

    async def unfinished(self, platform: str, *, chatless: bool = False) -> list[Pending]:
        """The updates received and not handled (a crash interrupted them), oldest first;
        ``chatless``: only those that belong to no chat (the rest go by ``pending_in_chat``)."""
        query = select(Delivery).where(Delivery.platform == platform, Delivery.done.is_(False))
        if chatless:
            query = query.where(Delivery.chat_key.is_(None))
        async with self._sessions() as session:
            rows = await session.scalars(query.order_by(Delivery.received_at, Delivery.key))
            return [Pending(r.key, r.payload, r.reply_ref) for r in rows]

    async def reply_started(self, platform: str, key: str, reply_ref: str) -> None:
        """Record the first message of the update's reply (a second answer edits it)."""
        await self._set(platform, key, reply_ref=reply_ref)

    async def finish(self, platform: str, key: str) -> None:
        """The update is handled: not handled again at the next start."""
        await self._set(platform, key, done=True)

    async def _set(self, platform: str, key: str, **values: Any) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(Delivery)
                .where(Delivery.platform == platform, Delivery.key == key)
                .values(**values)
            )

    async def prune(self) -> int:
        """Forget handled updates older than ``KEEP_DONE``; returns how many."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(Delivery).where(
                    Delivery.done.is_(True), Delivery.received_at < utcnow() - KEEP_DONE
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def answer_to(self, source_key: str) -> Reply | None:
        """The stored, finished reply to the message stored under ``source_key`` (None if it
        was never answered): shown again rather than written twice."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(ExchangeRow)
                .join(Message, Message.id == ExchangeRow.request_message_id)
                .where(Message.source_key == source_key, ExchangeRow.status == "done")
                .order_by(ExchangeRow.id.desc())
                .limit(1)
            )
        if row is None:
            return None
        return Reply(
            row.completion or "…",
            ReplyKind.ANSWER,
            exchange_id=row.id,
            adapter_version=row.adapter_version,
        )
