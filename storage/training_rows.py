"""What training may read: usable ratings and unrated text, with opt-outs and /forget applied.

An opted-out user's words also appear in group members' prompts (``Name: text``, see
bot/prompt.py), as do the bot's replies to them. /optout can be undone, so those prompts are not
rewritten in the database: rows are scrubbed as they are read, with /forget's placeholder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from bot.types import Exchange, RatedExchange, Turn
from storage.curation import untrainable_raters
from storage.db import aware
from storage.forget import Quoted, quoted_forms, scrub
from storage.models import Chat, Message, Rating, User
from storage.models import Exchange as ExchangeRow


def turns(raw: Sequence[dict[str, str]]) -> tuple[Turn, ...]:
    """Stored prompt JSON as typed turns."""
    return tuple(Turn(role=t["role"], content=t["content"]) for t in raw)  # type: ignore[arg-type]


def exchange(
    row: ExchangeRow, chat_key: str, user_key: str, prompt: Sequence[dict[str, str]] | None = None
) -> Exchange:
    """An exchange row as a ``bot.types.Exchange`` (with ``prompt`` in place of the stored one when
    given, e.g. scrubbed)."""
    return Exchange(
        id=row.id,
        chat_key=chat_key,
        user_key=user_key,
        prompt=turns(row.prompt if prompt is None else prompt),
        completion=row.completion,
        adapter_version=row.adapter_version,
        created_at=aware(row.created_at),
    )


class TrainingRows:
    """One instance hangs off the Repository as ``repo.training``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def rated(self, limit: int | None = None) -> list[RatedExchange]:
        """Every usable rating, newest first: on answered exchanges not excluded by a /forget
        (or an operator), from raters who did not opt out and whom no operator blocked or
        excluded, on exchanges whose author did not opt out either (the prompt holds their
        words). One row per rating."""
        rater, author = User, aliased(User)
        query = (
            select(Rating, ExchangeRow, rater.key)
            .join(ExchangeRow, ExchangeRow.id == Rating.exchange_id)
            .join(rater, rater.id == Rating.user_id)
            .join(author, author.id == ExchangeRow.user_id)
            .where(
                ExchangeRow.status == "done",
                ExchangeRow.training_excluded.is_(False),
                rater.training_opt_out.is_(False),
                author.training_opt_out.is_(False),
                rater.key.not_in(untrainable_raters()),  # blocked or excluded by an operator
            )
            .order_by(Rating.updated_at.desc(), Rating.id.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
            quoted = await _opted_out_words(session, {row.chat_id for _, row, _ in rows})
        return [
            RatedExchange(
                exchange_id=row.id,
                user_key=user_key,
                prompt=turns(scrub(row.chat_id, row.prompt, quoted)),
                completion=row.completion,
                label=rating.value > 0,
                adapter_version=row.adapter_version,
                rated_at=aware(rating.updated_at),
            )
            for rating, row, user_key in rows
        ]

    async def unrated(self, limit: int) -> list[Exchange]:
        """Answered exchanges nobody rated, newest first, of authors who did not opt out: text
        for the optional self-supervised training term."""
        rated = select(Rating.exchange_id).where(Rating.exchange_id == ExchangeRow.id).exists()
        query = (
            select(ExchangeRow, Chat.key, User.key)
            .join(Chat, Chat.id == ExchangeRow.chat_id)
            .join(User, User.id == ExchangeRow.user_id)
            .where(
                ExchangeRow.status == "done",
                ExchangeRow.training_excluded.is_(False),
                User.training_opt_out.is_(False),
                ~rated,
            )
            .order_by(ExchangeRow.id.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
            quoted = await _opted_out_words(session, {row.chat_id for row, _, _ in rows})
        return [
            exchange(row, chat_key, user_key, scrub(row.chat_id, row.prompt, quoted))
            for row, chat_key, user_key in rows
        ]

    async def ratings_since(self, when: datetime) -> int:
        """Votes cast or changed after ``when`` (the scheduler's "M new ratings")."""
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(Rating).where(Rating.updated_at > when)
            )
        return count or 0

    async def withdrawn(self, exchange_ids: Iterable[int]) -> set[int]:
        """Those of ``exchange_ids`` that were deleted or excluded since (a /forget while a
        run trained on them): the version trained on them is marked tainted."""
        wanted = set(exchange_ids)
        if not wanted:
            return set()
        async with self._sessions() as session:
            kept = (
                await session.scalars(
                    select(ExchangeRow.id).where(
                        ExchangeRow.id.in_(wanted), ExchangeRow.training_excluded.is_(False)
                    )
                )
            ).all()
        return wanted - set(kept)


async def _opted_out_words(session: AsyncSession, chat_ids: set[int]) -> Quoted:
    """The turns of opted-out users in ``chat_ids`` as prompts hold them, by chat: their
    messages (bare, and ``Name: text`` as group prompts show them) and the bot's replies to
    them, which quote them (as /forget scrubs them)."""
    if not chat_ids:
        return {}
    opted_out = select(User.id).where(User.training_opt_out.is_(True)).scalar_subquery()
    replies = (
        select(ExchangeRow.reply_message_id)
        .where(ExchangeRow.user_id.in_(opted_out), ExchangeRow.reply_message_id.is_not(None))
        .scalar_subquery()
    )
    found = await session.execute(
        select(Message.chat_id, Message.role, Message.content, Message.user_name).where(
            Message.chat_id.in_(chat_ids),
            or_(Message.user_id.in_(opted_out), Message.id.in_(replies)),
        )
    )
    return quoted_forms(found.all())
