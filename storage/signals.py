"""The signals besides 👍/👎 buttons: 🔄 regenerated replies, /better corrections, and the
counts /stats shows of every kind of signal. One instance hangs off the Repository as
``repo.signals``; reactions are votes (``Repository.set_vote``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import Chat, Message, Rating, User, utcnow
from storage.models import Exchange as ExchangeRow

CORRECTION = "correction"  # Exchange.source of a reply a user wrote with /better


@dataclass(frozen=True)
class SignalCounts:
    """How users gave their signals: votes by source, 🔄 regenerations, corrections."""

    votes_by_source: dict[str, int]
    regenerations: int
    corrections: int


class Signals:
    """Alternatives of one prompt: regenerations and corrections."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def exchange_for_message(self, chat_key: str, platform_id: str) -> int | None:
        """The answered exchange a bot message of the chat shows now (None: not one of the
        bot's replies, e.g. a notice, or another chat's). ``chat_key`` without a thread also
        finds it in the chat's threads (Telegram's reactions do not name the topic)."""
        async with self._sessions() as session:
            return await session.scalar(
                select(ExchangeRow.id)
                .join(Message, Message.id == ExchangeRow.reply_message_id)
                .join(Chat, Chat.id == ExchangeRow.chat_id)
                .where(
                    or_(Chat.key == chat_key, Chat.key.startswith(f"{chat_key}:", autoescape=True)),
                    Message.platform_message_id == platform_id,
                    ExchangeRow.status == "done",
                )
                .order_by(ExchangeRow.id.desc())
                .limit(1)
            )

    async def start_regeneration(
        self, exchange_id: int, adapter_version: int | None, model_name: str, params: dict[str, Any]
    ) -> int:
        """A new pending exchange on the exact prompt of ``exchange_id`` (another reply to the
        same message), linked to the first reply of that prompt."""
        async with self._sessions.begin() as session:
            first = await session.get_one(ExchangeRow, exchange_id)
            row = ExchangeRow(
                chat_id=first.chat_id,
                user_id=first.user_id,
                request_message_id=first.request_message_id,
                prompt=first.prompt,
                adapter_version=adapter_version,
                model_name=model_name,
                params=params,
                status="pending",
                regenerated_from=first.regenerated_from or first.id,
            )
            session.add(row)
            await session.flush()
            return row.id

    async def finish_regeneration(
        self, exchange_id: int, completion: str, adapter_version: int | None, replaces: int
    ) -> None:
        """Store the new reply. It takes the old reply's place in the conversation (the same
        stored message, so the next prompt holds one reply, and the platform's message, edited
        in place, now shows this exchange)."""
        async with self._sessions.begin() as session:
            row = await session.get_one(ExchangeRow, exchange_id)
            old = await _shown(session, await session.get_one(ExchangeRow, replaces))
            message_id, old.reply_message_id = old.reply_message_id, None
            if message_id is not None:
                (await session.get_one(Message, message_id)).content = completion
            row.completion, row.status, row.adapter_version = completion, "done", adapter_version
            row.reply_message_id, row.finished_at = message_id, utcnow()

    async def correct(self, exchange_id: int, user_key: str, text: str) -> int:
        """Store ``text`` as the reply ``user_key`` wanted to the prompt of ``exchange_id``:
        an alternative of it (source "correction") that its writer likes."""
        async with self._sessions.begin() as session:
            first = await session.get_one(ExchangeRow, exchange_id)
            writer = await _user(session, user_key)
            row = ExchangeRow(
                chat_id=first.chat_id,
                user_id=first.user_id,  # the prompt is the author's words
                request_message_id=first.request_message_id,
                prompt=first.prompt,
                completion=text,
                adapter_version=first.adapter_version,  # the version whose reply it corrects
                model_name=first.model_name,
                params={},
                status="done",
                regenerated_from=first.regenerated_from or first.id,
                source=CORRECTION,
                corrected_by=writer.id,
                finished_at=utcnow(),
            )
            session.add(row)
            await session.flush()
            session.add(Rating(exchange_id=row.id, user_id=writer.id, value=1, source=CORRECTION))
            return row.id

    async def counts(self) -> SignalCounts:
        """Votes by source, regenerations and corrections, for /stats."""
        async with self._sessions() as session:
            by_source = await session.execute(
                select(Rating.source, func.count()).group_by(Rating.source)
            )
            kinds = await session.execute(
                select(ExchangeRow.source, func.count())
                .where(ExchangeRow.regenerated_from.is_not(None), ExchangeRow.status == "done")
                .group_by(ExchangeRow.source)
            )
            per_kind = dict(kinds.all())
        return SignalCounts(
            votes_by_source=dict(sorted(by_source.all())),
            regenerations=per_kind.get("model", 0),
            corrections=per_kind.get(CORRECTION, 0),
        )


async def _shown(session: AsyncSession, row: ExchangeRow) -> ExchangeRow:
    """The alternative of ``row``'s prompt that the chat shows now (``row`` itself unless an
    older reply's button was pressed after another 🔄 took its place)."""
    if row.reply_message_id is not None:
        return row
    root = row.regenerated_from or row.id
    holder = await session.scalar(
        select(ExchangeRow).where(
            or_(ExchangeRow.id == root, ExchangeRow.regenerated_from == root),
            ExchangeRow.reply_message_id.is_not(None),
        )
    )
    return holder if holder is not None else row


async def _user(session: AsyncSession, key: str) -> User:
    user = await session.scalar(select(User).where(User.key == key))
    if user is None:
        user = User(key=key, platform=key.partition(":")[0])
        session.add(user)
        await session.flush()
    return user
