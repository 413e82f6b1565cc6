"""Read-only queries of the operator's dashboard: chats, transcripts, ratings, users, runs.

Every list is bounded (``limit``) and served by an index, so a page stays fast on a database
of a hundred thousand messages (bench/dashboard.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, case, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from storage.db import aware
from storage.models import Chat, Message, Rating, TrainingRunRow, UsedLoginNonce, User, utcnow
from storage.models import Exchange as ExchangeRow


@dataclass(frozen=True)
class ChatSummary:
    """One chat in the conversations list."""

    key: str
    platform: str
    messages: int
    last_at: datetime | None


@dataclass(frozen=True)
class Vote:
    """One rating as the dashboard lists it."""

    id: int
    exchange_id: int
    user_key: str
    user_name: str
    chat_key: str
    value: int
    adapter_version: int | None
    rated_at: datetime
    completion: str
    training_excluded: bool


@dataclass(frozen=True)
class TranscriptLine:
    """A stored message; a reply carries its exchange: prompt, version, ratings."""

    id: int
    role: str
    content: str
    user_name: str | None
    created_at: datetime
    conversation: int
    exchange_id: int | None = None
    adapter_version: int | None = None
    prompt: list[dict[str, str]] = field(default_factory=list)
    training_excluded: bool = False
    votes: list[Vote] = field(default_factory=list)


@dataclass(frozen=True)
class UserSummary:
    """One user in the users list, with their rating counts and state."""

    key: str
    name: str
    ups: int
    downs: int
    opted_out: bool
    forgotten_at: datetime | None


@dataclass(frozen=True)
class RunDetail:
    """One training run as the run page shows it."""

    id: int
    status: str
    trigger: str
    requested_by: str | None
    adapter_version: int | None
    message: str
    report: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None


@dataclass(frozen=True)
class RatingFilter:
    """The Ratings page's filters; None means any."""

    label: int | None = None  # 1 or -1
    user_key: str | None = None
    chat_key: str | None = None
    adapter_version: int | None = None  # 0: the base model
    since: datetime | None = None
    until: datetime | None = None


class Dashboard:
    """One instance hangs off the Repository as ``repo.dashboard``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def active_chats(self, within: timedelta = timedelta(hours=1)) -> int:
        """Chats with a message in the last ``within``."""
        since = utcnow() - within
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count(func.distinct(Message.chat_id))).where(
                    Message.created_at >= since
                )
            )
        return count or 0

    async def chats(
        self, platform: str | None = None, search: str | None = None, limit: int = 100
    ) -> list[ChatSummary]:
        """Chats, the most recently active first; ``search`` matches the chat key, a user's
        name or a message's text."""
        counts = (
            select(
                Message.chat_id,
                func.count().label("n"),
                func.max(Message.created_at).label("last"),
            )
            .group_by(Message.chat_id)
            .subquery()
        )
        query = (
            select(Chat.key, Chat.platform, counts.c.n, counts.c.last)
            .outerjoin(counts, counts.c.chat_id == Chat.id)
            .order_by(counts.c.last.desc().nulls_last(), Chat.id.desc())
            .limit(limit)
        )
        if platform:
            query = query.where(Chat.platform == platform)
        if search:
            query = query.where(_chat_matches(search))
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            ChatSummary(key, plat, n or 0, aware(last) if last else None)
            for key, plat, n, last in rows
        ]

    async def platforms(self) -> list[str]:
        async with self._sessions() as session:
            return list(
                await session.scalars(select(Chat.platform).distinct().order_by(Chat.platform))
            )

    async def transcript(self, chat_key: str, limit: int = 200) -> list[TranscriptLine]:
        """The chat's last ``limit`` messages, oldest first, replies with their exchange."""
        async with self._sessions() as session:
            chat_id = await session.scalar(select(Chat.id).where(Chat.key == chat_key))
            if chat_id is None:
                return []
            rows = (
                await session.scalars(
                    select(Message)
                    .where(Message.chat_id == chat_id)
                    .order_by(Message.id.desc())
                    .limit(limit)
                )
            ).all()
            replies = await _exchanges_by_reply(session, chat_id, [r.id for r in rows])
            votes = await _votes_of(session, [e.id for e in replies.values()])
        return [_line(row, replies.get(row.id), votes) for row in reversed(rows)]

    async def ratings(self, wanted: RatingFilter, limit: int = 200) -> list[Vote]:
        """Ratings matching ``wanted``, the newest first."""
        query = _filtered(_vote_query(), wanted).order_by(Rating.id.desc()).limit(limit)
        async with self._sessions() as session:
            return [_vote(*row) for row in (await session.execute(query)).all()]

    async def users(self, limit: int = 500) -> list[UserSummary]:
        """Users by how many ratings they gave, the most first."""
        ups = func.coalesce(func.sum(case((Rating.value > 0, 1), else_=0)), 0)
        downs = func.coalesce(func.sum(case((Rating.value < 0, 1), else_=0)), 0)
        query = (
            select(User, ups, downs)
            .outerjoin(Rating, Rating.user_id == User.id)
            .group_by(User.id)
            .order_by((ups + downs).desc(), User.id)
            .limit(limit)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            UserSummary(
                user.key,
                user.name,
                int(up),
                int(down),
                user.training_opt_out,
                aware(user.forgotten_at) if user.forgotten_at else None,
            )
            for user, up, down in rows
        ]

    async def run(self, run_id: int) -> RunDetail | None:
        """A training run with its report (the curation report, metrics, the gate)."""
        async with self._sessions() as session:
            row = await session.get(TrainingRunRow, run_id)
        if row is None:
            return None
        return RunDetail(
            row.id,
            row.status,
            row.trigger,
            row.requested_by,
            row.adapter_version,
            row.message,
            dict(row.report),
            aware(row.started_at),
            aware(row.finished_at) if row.finished_at else None,
        )

    async def recent_replies(self, within: timedelta) -> int:
        """Answered exchanges finished in the last ``within``."""
        since = utcnow() - within
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(ExchangeRow)
                .where(ExchangeRow.status == "done", ExchangeRow.finished_at >= since)
            )
        return count or 0

    async def use_login_nonce(self, nonce: str, user_key: str, expires_at: datetime) -> bool:
        """Mark a login link's nonce used; False when it was used before (a replay). The
        primary key decides, so two tabs racing with one link cannot both log in."""
        try:
            async with self._sessions.begin() as session:
                await session.execute(
                    delete(UsedLoginNonce).where(UsedLoginNonce.expires_at < utcnow())
                )
                session.add(UsedLoginNonce(nonce=nonce, user_key=user_key, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    async def login_nonce_used(self, nonce: str) -> bool:
        async with self._sessions() as session:
            return await session.get(UsedLoginNonce, nonce) is not None

    async def ping(self) -> None:
        """Raises when the database cannot answer (for /healthz)."""
        async with self._sessions() as session:
            await session.scalar(select(1))


def _chat_matches(search: str) -> Any:
    pattern = f"%{search}%"
    in_messages = (
        select(Message.id)
        .where(
            Message.chat_id == Chat.id,
            or_(Message.content.ilike(pattern), Message.user_name.ilike(pattern)),
        )
        .exists()
    )
    return or_(Chat.key.ilike(pattern), in_messages)


_RATER = aliased(User, name="rater")
if TYPE_CHECKING:  # SQLAlchemy 2.1's variadic Select; only spelled for the type checker
    _VoteQuery = Select[Rating, ExchangeRow, str, str, str]


def _vote_query() -> _VoteQuery:
    return (
        select(Rating, ExchangeRow, _RATER.key, _RATER.name, Chat.key)
        .join(ExchangeRow, ExchangeRow.id == Rating.exchange_id)
        .join(_RATER, _RATER.id == Rating.user_id)
        .join(Chat, Chat.id == ExchangeRow.chat_id)
    )


def _filtered(query: _VoteQuery, wanted: RatingFilter) -> _VoteQuery:
    conditions: list[tuple[object, Any]] = [
        (wanted.label, lambda: Rating.value == wanted.label),
        (wanted.user_key, lambda: _RATER.key == wanted.user_key),
        (wanted.chat_key, lambda: Chat.key == wanted.chat_key),
        (wanted.since, lambda: Rating.updated_at >= wanted.since),
        (wanted.until, lambda: Rating.updated_at < wanted.until),
    ]
    for value, condition in conditions:
        if value is not None:
            query = query.where(condition())
    if wanted.adapter_version is not None:
        version = func.coalesce(ExchangeRow.adapter_version, 0)
        query = query.where(version == wanted.adapter_version)
    return query


def _vote(rating: Rating, row: ExchangeRow, user_key: str, user_name: str, chat_key: str) -> Vote:
    return Vote(
        id=rating.id,
        exchange_id=row.id,
        user_key=user_key,
        user_name=user_name,
        chat_key=chat_key,
        value=rating.value,
        adapter_version=row.adapter_version,
        rated_at=aware(rating.updated_at),
        completion=row.completion,
        training_excluded=row.training_excluded,
    )


async def _exchanges_by_reply(
    session: AsyncSession, chat_id: int, message_ids: list[int]
) -> dict[int, ExchangeRow]:
    if not message_ids:
        return {}
    rows = await session.scalars(
        select(ExchangeRow).where(
            ExchangeRow.chat_id == chat_id, ExchangeRow.reply_message_id.in_(message_ids)
        )
    )
    return {row.reply_message_id: row for row in rows if row.reply_message_id is not None}


async def _votes_of(session: AsyncSession, exchange_ids: list[int]) -> dict[int, list[Vote]]:
    if not exchange_ids:
        return {}
    query = _vote_query().where(Rating.exchange_id.in_(exchange_ids)).order_by(Rating.id)
    found: dict[int, list[Vote]] = {}
    for row in (await session.execute(query)).all():
        vote = _vote(*row)
        found.setdefault(vote.exchange_id, []).append(vote)
    return found


def _line(
    row: Message, exchange: ExchangeRow | None, votes: dict[int, list[Vote]]
) -> TranscriptLine:
    base: dict[str, Any] = {
        "id": row.id,
        "role": row.role,
        "content": row.content,
        "user_name": row.user_name,
        "created_at": aware(row.created_at),
        "conversation": row.conversation,
    }
    if exchange is None:
        return TranscriptLine(**base)
    return TranscriptLine(
        **base,
        exchange_id=exchange.id,
        adapter_version=exchange.adapter_version,
        prompt=list(exchange.prompt),
        training_excluded=exchange.training_excluded,
        votes=votes.get(exchange.id, []),
    )
