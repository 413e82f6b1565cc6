"""What training may read: usable ratings and unrated text, with opt-outs and /forget applied.

An opted-out user's words also appear in group members' prompts (``Name: text``, see
bot/prompt.py), as do the bot's replies to them. /optout can be undone, so those prompts are not
rewritten in the database: rows are scrubbed as they are read, with /forget's placeholder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from bot.types import Exchange, RatedExchange, Turn, Vote
from storage.curation import untrainable_raters
from storage.db import aware
from storage.forget import Quoted, quoted_forms, scrub
from storage.models import Chat, Message, Rating, User
from storage.models import Exchange as ExchangeRow
from storage.pairs import Alternative, PreferencePair, pair_up


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

    async def pairs(self) -> list[PreferencePair]:
        """Every usable preference pair (``storage.pairs``), newest first: among the answered
        replies to one prompt that are not excluded, whose author (and, for a correction, its
        writer) did not opt out, from the votes of raters who may train."""
        async with self._sessions() as session:
            alternatives = await _alternatives(session)
            votes = await _votes(session, set(alternatives))
            chats = {row.chat_id for group in alternatives.values() for row, _ in group}
            quoted = await _opted_out_words(session, chats)
        pairs = []
        for (root, rater), (rated_at, by_id) in votes.items():
            group = alternatives[root]
            first = group[0][0]
            prompt = turns(scrub(first.chat_id, first.prompt, quoted))
            options = [_alternative(row, writer) for row, writer in group]
            for chosen, rejected in pair_up(options, rater, by_id):
                pairs.append(PreferencePair(rater, prompt, chosen, rejected, rated_at))
        pairs.sort(key=lambda p: p.rated_at, reverse=True)
        return pairs

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


_Group = list[tuple[ExchangeRow, str | None]]  # the alternatives of one prompt, and writers


def _root() -> Any:
    """The first reply of the prompt an exchange answers (its own id when it is the first)."""
    return func.coalesce(ExchangeRow.regenerated_from, ExchangeRow.id)


async def _alternatives(session: AsyncSession) -> dict[int, _Group]:
    """The usable replies of every prompt that has more than one, by first reply's id."""
    author, writer = aliased(User), aliased(User)
    linked = select(ExchangeRow.regenerated_from).where(ExchangeRow.regenerated_from.is_not(None))
    query = (
        select(ExchangeRow, writer.key)
        .join(author, author.id == ExchangeRow.user_id)
        .outerjoin(writer, writer.id == ExchangeRow.corrected_by)
        .where(
            _root().in_(linked),
            ExchangeRow.status == "done",
            ExchangeRow.training_excluded.is_(False),
            author.training_opt_out.is_(False),
            or_(
                ExchangeRow.corrected_by.is_(None),
                writer.training_opt_out.is_(False) & writer.key.not_in(untrainable_raters()),
            ),
        )
        .order_by(ExchangeRow.id)
    )
    groups: dict[int, _Group] = {}
    for row, writer_key in (await session.execute(query)).all():
        groups.setdefault(row.regenerated_from or row.id, []).append((row, writer_key))
    return {root: group for root, group in groups.items() if len(group) > 1}


_Votes = dict[tuple[int, str], tuple[datetime, dict[int, Vote]]]


async def _votes(session: AsyncSession, roots: set[int]) -> _Votes:
    """Per (prompt, rater): the rater's votes on its replies and when they last voted."""
    if not roots:
        return {}
    query = (
        select(Rating, _root(), User.key)
        .join(ExchangeRow, ExchangeRow.id == Rating.exchange_id)
        .join(User, User.id == Rating.user_id)
        .where(
            _root().in_(roots),
            User.training_opt_out.is_(False),
            User.key.not_in(untrainable_raters()),
        )
    )
    found: _Votes = {}
    for rating, root, rater in (await session.execute(query)).all():
        when, by_id = found.setdefault((root, rater), (aware(rating.updated_at), {}))
        by_id[rating.exchange_id] = Vote(rating.value)
        found[root, rater] = (max(when, aware(rating.updated_at)), by_id)
    return found


def _alternative(row: ExchangeRow, writer: str | None) -> Alternative:
    return Alternative(row.id, row.completion, row.adapter_version, writer)


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
