"""The operator's curation of the training data, the users they block, and the audit log.

Curation acts on the rows training already reads, so the next run respects it without a
second source of truth: a flipped rating changes its label, a dropped rating is deleted, an
exchange marked "never train on this" is excluded the way /forget excludes one (for good: it
cannot be unmarked, as a /forget's scrub must never become trainable again), and a user whose
ratings are excluded (or who is blocked) is left out by ``repo.training.rated``. Every action
writes an ``audit_log`` row (who, when, what it was before) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.errors import UserError
from storage.db import aware
from storage.models import AuditEntry, Rating, User, UserControl, utcnow
from storage.models import Exchange as ExchangeRow


class CurationError(UserError):
    """The thing to curate does not exist (any more)."""


@dataclass(frozen=True)
class Audit:
    """One audit log entry."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Control:
    """An operator's decisions about one user key."""

    user_key: str
    blocked: bool
    ratings_excluded: bool
    updated_by: str
    updated_at: datetime


def _audit(row: AuditEntry) -> Audit:
    return Audit(row.id, aware(row.at), row.actor, row.action, row.target, dict(row.detail))


def untrainable_raters() -> Select[str]:
    """User keys whose ratings never train: blocked, or excluded by an operator (a subquery
    for ``repo.training.rated``)."""
    return select(UserControl.user_key).where(
        or_(UserControl.blocked.is_(True), UserControl.ratings_excluded.is_(True))
    )


class Curation:
    """One instance hangs off the Repository as ``repo.curation``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(
        self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Write an audit entry on its own (for actions stored elsewhere: adapters, A/B)."""
        async with self._sessions.begin() as session:
            _log(session, actor, action, target, detail or {})

    async def flip_rating(self, rating_id: int, actor: str) -> int:
        """Turn a 👍 into a 👎 or back; returns the new value. ``updated_at`` stays: a flip is
        not a new vote (the scheduler counts new votes)."""
        async with self._sessions.begin() as session:
            rating = await _rating(session, rating_id)
            before, rating.value = rating.value, -rating.value
            detail = {"exchange_id": rating.exchange_id, "before": before, "after": rating.value}
            _log(session, actor, "rating.flip", f"rating:{rating_id}", detail)
            return rating.value

    async def drop_rating(self, rating_id: int, actor: str) -> None:
        """Delete a rating; the audit entry keeps what it was."""
        async with self._sessions.begin() as session:
            rating = await _rating(session, rating_id)
            rater = await session.scalar(select(User.key).where(User.id == rating.user_id))
            detail = {"exchange_id": rating.exchange_id, "user": rater, "value": rating.value}
            await session.delete(rating)
            _log(session, actor, "rating.drop", f"rating:{rating_id}", detail)

    async def never_train(self, exchange_id: int, actor: str) -> None:
        """Keep an exchange out of every training run from now on (ratings and unrated text)."""
        async with self._sessions.begin() as session:
            row = await session.get(ExchangeRow, exchange_id)
            if row is None:
                raise CurationError(f"There is no exchange #{exchange_id}.")
            detail = {"already": row.training_excluded}
            row.training_excluded = True
            _log(session, actor, "exchange.never_train", f"exchange:{exchange_id}", detail)

    async def set_user(
        self,
        user_key: str,
        actor: str,
        *,
        blocked: bool | None = None,
        ratings_excluded: bool | None = None,
    ) -> Control:
        """Block/unblock a user key, or exclude/include its ratings (None: unchanged)."""
        async with self._sessions.begin() as session:
            row = await session.get(UserControl, user_key)
            if row is None:
                row = UserControl(user_key=user_key, blocked=False, ratings_excluded=False)
                session.add(row)
            for field, value in (("blocked", blocked), ("ratings_excluded", ratings_excluded)):
                if value is not None:
                    action = _USER_ACTIONS[field][value]
                    _log(
                        session, actor, action, f"user:{user_key}", {"before": getattr(row, field)}
                    )
                    setattr(row, field, value)
            row.updated_by, row.updated_at = actor, utcnow()
            await session.flush()
            return _control(row)

    async def control(self, user_key: str) -> Control | None:
        async with self._sessions() as session:
            row = await session.get(UserControl, user_key)
            return _control(row) if row else None

    async def is_blocked(self, user_key: str) -> bool:
        """For the chat's access check (one primary-key lookup)."""
        async with self._sessions() as session:
            blocked = await session.scalar(
                select(UserControl.blocked).where(UserControl.user_key == user_key)
            )
        return bool(blocked)

    async def controls(self) -> dict[str, Control]:
        """Every user key with a decision, by key."""
        async with self._sessions() as session:
            rows = await session.scalars(select(UserControl))
            return {row.user_key: _control(row) for row in rows}

    async def audit(
        self, limit: int = 100, *, since: datetime | None = None, action: str | None = None
    ) -> list[Audit]:
        """The newest entries first; ``action`` may be a prefix such as ``"rating."``."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if action is not None:
            query = query.where(AuditEntry.action.startswith(action))
        async with self._sessions() as session:
            return [_audit(row) for row in await session.scalars(query)]

    async def summary_since(self, since: datetime | None) -> dict[str, int]:
        """Curation actions by kind since ``since`` (all when None): for a run's report."""
        query = select(AuditEntry.action, func.count()).group_by(AuditEntry.action)
        query = query.where(
            or_(*(AuditEntry.action.startswith(p) for p in ("rating.", "exchange.", "user.")))
        )
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        async with self._sessions() as session:
            return dict((await session.execute(query)).all())


_USER_ACTIONS = {
    "blocked": {True: "user.block", False: "user.unblock"},
    "ratings_excluded": {True: "user.exclude_ratings", False: "user.include_ratings"},
}


def _log(
    session: AsyncSession, actor: str, action: str, target: str, detail: dict[str, Any]
) -> None:
    session.add(AuditEntry(actor=actor, action=action, target=target, detail=detail))


async def _rating(session: AsyncSession, rating_id: int) -> Rating:
    rating = await session.get(Rating, rating_id)
    if rating is None:
        raise CurationError(f"There is no rating #{rating_id} (any more).")
    return rating


def _control(row: UserControl) -> Control:
    return Control(
        row.user_key, row.blocked, row.ratings_excluded, row.updated_by, aware(row.updated_at)
    )
