"""The queries the core needs, returning bot.types values (never ORM rows)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from bot.types import (
    AdapterStatus,
    AdapterVersion,
    ChatInfo,
    Exchange,
    HistoryMessage,
    RateAction,
    RatedExchange,
    RateOutcome,
    RunStatus,
    TrainingRun,
    Turn,
    Vote,
)
from storage.abtests import ABTests
from storage.db import session_factory
from storage.forget import ForgetReport, forget_user
from storage.models import (
    AdapterVersionRow,
    Chat,
    Message,
    Rating,
    TrainingRunRow,
    User,
    utcnow,
)
from storage.models import Exchange as ExchangeRow


class _Unset:
    """Marks an argument not given (None is a meaningful value: the base model)."""


UNSET = _Unset()


class TrainingAlreadyRunning(RuntimeError):
    """Another training run holds the lock (in this process or another one)."""

    def __init__(self, run: TrainingRun) -> None:
        super().__init__(f"training run {run.id} is already running since {run.started_at:%H:%M}")
        self.run = run


@dataclass(frozen=True)
class Counts:
    users: int
    chats: int
    exchanges: int
    failed_exchanges: int
    ups: int
    downs: int


@dataclass(frozen=True)
class DailyRatings:
    day: str  # ISO date
    adapter_version: int | None
    ups: int
    downs: int


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _turns(raw: Sequence[dict[str, str]]) -> tuple[Turn, ...]:
    return tuple(Turn(role=t["role"], content=t["content"]) for t in raw)  # type: ignore[arg-type]


def _adapter(row: AdapterVersionRow) -> AdapterVersion:
    return AdapterVersion(
        version=row.version,
        path=row.path,
        parent=row.parent,
        created_at=_aware(row.created_at),
        status=AdapterStatus(row.status),
        exchange_ids=tuple(row.exchange_ids),
        metrics=dict(row.metrics),
        hyperparams=dict(row.hyperparams),
        duration_s=row.duration_s,
        tainted=row.tainted,
    )


def _run(row: TrainingRunRow) -> TrainingRun:
    return TrainingRun(
        id=row.id,
        status=RunStatus(row.status),
        trigger=row.trigger,
        requested_by=row.requested_by,
        started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at) if row.finished_at else None,
        adapter_version=row.adapter_version,
        message=row.message,
    )


class Repository:
    """Async repository over one engine. Each method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
        self.ab = ABTests(self._sessions)  # A/B tests of adapter versions

    async def aclose(self) -> None:
        await self.engine.dispose()

    # -- users and chats ---------------------------------------------------------------------

    async def _user(self, session: AsyncSession, key: str, name: str = "") -> User:
        user = await session.scalar(select(User).where(User.key == key))
        if user is None:
            user = User(key=key, platform=key.partition(":")[0], name=name)
            session.add(user)
            await session.flush()
        elif name and user.name != name:
            user.name = name
        return user

    async def _chat(self, session: AsyncSession, key: str) -> Chat:
        chat = await session.scalar(select(Chat).where(Chat.key == key))
        if chat is None:
            chat = Chat(key=key, platform=key.partition(":")[0], conversation=1)
            session.add(chat)
            await session.flush()
        return chat

    async def _retrying(self, work: Any) -> Any:
        # Two requests may create the same user or chat at once; the loser retries and finds it.
        for attempt in range(3):
            try:
                async with self._sessions.begin() as session:
                    return await work(session)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def chat(self, chat_key: str) -> ChatInfo:
        async def work(session: AsyncSession) -> ChatInfo:
            chat = await self._chat(session, chat_key)
            return ChatInfo(key=chat.key, persona=chat.persona, conversation=chat.conversation)

        result: ChatInfo = await self._retrying(work)
        return result

    async def set_persona(self, chat_key: str, persona: str | None) -> None:
        async def work(session: AsyncSession) -> None:
            (await self._chat(session, chat_key)).persona = persona

        await self._retrying(work)

    async def new_conversation(self, chat_key: str) -> int:
        async def work(session: AsyncSession) -> int:
            chat = await self._chat(session, chat_key)
            chat.conversation += 1
            return chat.conversation

        result: int = await self._retrying(work)
        return result

    # -- messages and exchanges ---------------------------------------------------------------

    async def add_user_message(
        self, chat_key: str, user_key: str, user_name: str, text: str, platform_id: str | None
    ) -> int:
        """Store an incoming message (before it is answered); returns its id."""

        async def work(session: AsyncSession) -> int:
            chat = await self._chat(session, chat_key)
            user = await self._user(session, user_key, user_name)
            message = Message(
                chat_id=chat.id,
                user_id=user.id,
                conversation=chat.conversation,
                role="user",
                content=text,
                user_name=user_name,
                platform_message_id=platform_id,
            )
            session.add(message)
            await session.flush()
            return message.id

        result: int = await self._retrying(work)
        return result

    async def history(
        self, chat_key: str, limit: int, before_id: int | None = None
    ) -> list[HistoryMessage]:
        """The last ``limit`` messages of the chat's current conversation, oldest first."""
        async with self._sessions() as session:
            chat = await session.scalar(select(Chat).where(Chat.key == chat_key))
            if chat is None:
                return []
            query = select(Message).where(
                Message.chat_id == chat.id, Message.conversation == chat.conversation
            )
            if before_id is not None:
                query = query.where(Message.id < before_id)
            rows = (await session.scalars(query.order_by(Message.id.desc()).limit(limit))).all()
        return [
            HistoryMessage(
                role=row.role,  # type: ignore[arg-type]
                content=row.content,
                user_name=row.user_name,
                created_at=_aware(row.created_at),
            )
            for row in reversed(rows)
        ]

    async def start_exchange(
        self,
        chat_key: str,
        user_key: str,
        request_message_id: int,
        prompt: Sequence[Turn],
        adapter_version: int | None,
        model_name: str,
        params: dict[str, Any],
    ) -> int:
        async with self._sessions.begin() as session:
            chat = await self._chat(session, chat_key)
            user = await self._user(session, user_key)
            row = ExchangeRow(
                chat_id=chat.id,
                user_id=user.id,
                request_message_id=request_message_id,
                prompt=[{"role": t.role, "content": t.content} for t in prompt],
                adapter_version=adapter_version,
                model_name=model_name,
                params=params,
                status="pending",
            )
            session.add(row)
            await session.flush()
            return row.id

    async def finish_exchange(
        self, exchange_id: int, completion: str, *, adapter_version: int | _Unset | None = UNSET
    ) -> None:
        """Store the reply text, as an assistant message of the conversation too, and the
        adapter version that wrote it (when given; else the one recorded at the start)."""
        async with self._sessions.begin() as session:
            row = await session.get_one(ExchangeRow, exchange_id)
            request = await session.get_one(Message, row.request_message_id)
            reply = Message(
                chat_id=row.chat_id,
                user_id=None,
                conversation=request.conversation,
                role="assistant",
                content=completion,
            )
            session.add(reply)
            await session.flush()
            row.completion, row.status = completion, "done"
            if not isinstance(adapter_version, _Unset):
                row.adapter_version = adapter_version
            row.reply_message_id, row.finished_at = reply.id, utcnow()

    async def fail_exchange(self, exchange_id: int, error: str, partial: str = "") -> None:
        async with self._sessions.begin() as session:
            row = await session.get_one(ExchangeRow, exchange_id)
            row.status, row.error, row.completion = "failed", error, partial
            row.finished_at = utcnow()

    async def set_reply_platform_id(self, exchange_id: int, platform_id: str) -> None:
        async with self._sessions.begin() as session:
            row = await session.get_one(ExchangeRow, exchange_id)
            if row.reply_message_id is not None:
                message = await session.get_one(Message, row.reply_message_id)
                message.platform_message_id = platform_id

    async def exchange(self, exchange_id: int) -> Exchange | None:
        async with self._sessions() as session:
            found = (
                await session.execute(
                    select(ExchangeRow, Chat.key, User.key)
                    .join(Chat, Chat.id == ExchangeRow.chat_id)
                    .join(User, User.id == ExchangeRow.user_id)
                    .where(ExchangeRow.id == exchange_id, ExchangeRow.status == "done")
                )
            ).first()
        if found is None:
            return None
        row, chat_key, user_key = found
        return Exchange(
            id=row.id,
            chat_key=chat_key,
            user_key=user_key,
            prompt=_turns(row.prompt),
            completion=row.completion,
            adapter_version=row.adapter_version,
            created_at=_aware(row.created_at),
        )

    async def last_exchange_id(self, chat_key: str) -> int | None:
        """The newest answered exchange of the chat's current conversation."""
        async with self._sessions() as session:
            return await session.scalar(
                select(ExchangeRow.id)
                .join(Chat, Chat.id == ExchangeRow.chat_id)
                .join(Message, Message.id == ExchangeRow.request_message_id)
                .where(
                    Chat.key == chat_key,
                    ExchangeRow.status == "done",
                    Message.conversation == Chat.conversation,
                )
                .order_by(ExchangeRow.id.desc())
                .limit(1)
            )

    # -- ratings ------------------------------------------------------------------------------

    async def rate(self, exchange_id: int, user_key: str, vote: Vote) -> RateOutcome:
        """One vote per user per exchange: a new vote is stored, the other one changes it, the
        same one again retracts it."""

        async def work(session: AsyncSession) -> RateOutcome:
            exists = await session.scalar(
                select(ExchangeRow.id).where(
                    ExchangeRow.id == exchange_id, ExchangeRow.status == "done"
                )
            )
            if exists is None:
                return RateOutcome(
                    RateAction.REFUSED, exchange_id, None, "That reply no longer exists."
                )
            user = await self._user(session, user_key)
            rating = await session.scalar(
                select(Rating).where(Rating.exchange_id == exchange_id, Rating.user_id == user.id)
            )
            current: Vote | None
            if rating is None:
                session.add(Rating(exchange_id=exchange_id, user_id=user.id, value=int(vote)))
                action, current = RateAction.STORED, vote
            elif rating.value == int(vote):
                await session.delete(rating)
                action, current = RateAction.RETRACTED, None
            else:
                rating.value, rating.updated_at = int(vote), utcnow()
                action, current = RateAction.CHANGED, vote
            await session.flush()
            ups, downs = await self._counts(session, exchange_id)
            return RateOutcome(
                action, exchange_id, current, _rate_message(action, vote), ups, downs
            )

        result: RateOutcome = await self._retrying(work)
        return result

    @staticmethod
    async def _counts(session: AsyncSession, exchange_id: int) -> tuple[int, int]:
        rows = await session.execute(
            select(Rating.value, func.count())
            .where(Rating.exchange_id == exchange_id)
            .group_by(Rating.value)
        )
        counts = {value: count for value, count in rows}
        return counts.get(1, 0), counts.get(-1, 0)

    async def user_vote(self, exchange_id: int, user_key: str) -> Vote | None:
        async with self._sessions() as session:
            value = await session.scalar(
                select(Rating.value)
                .join(User, User.id == Rating.user_id)
                .where(Rating.exchange_id == exchange_id, User.key == user_key)
            )
        return None if value is None else Vote(value)

    async def rated_exchanges(self, limit: int | None = None) -> list[RatedExchange]:
        """Every usable rating, newest first: on answered exchanges not excluded by a /forget,
        from raters who did not opt out, on exchanges whose author did not opt out either (the
        prompt holds their words). One row per rating."""
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
            )
            .order_by(Rating.updated_at.desc(), Rating.id.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            RatedExchange(
                exchange_id=exchange.id,
                user_key=user_key,
                prompt=_turns(exchange.prompt),
                completion=exchange.completion,
                label=rating.value > 0,
                adapter_version=exchange.adapter_version,
                rated_at=_aware(rating.updated_at),
            )
            for rating, exchange, user_key in rows
        ]

    async def unrated_exchanges(self, limit: int) -> list[Exchange]:
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
        return [
            Exchange(
                id=row.id,
                chat_key=chat_key,
                user_key=user_key,
                prompt=_turns(row.prompt),
                completion=row.completion,
                adapter_version=row.adapter_version,
                created_at=_aware(row.created_at),
            )
            for row, chat_key, user_key in rows
        ]

    async def ratings_since(self, when: datetime) -> int:
        """Votes cast or changed after ``when`` (the scheduler's "M new ratings")."""
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(Rating).where(Rating.updated_at > when)
            )
        return count or 0

    async def withdrawn_exchanges(self, exchange_ids: Iterable[int]) -> set[int]:
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

    async def forget_user(self, user_key: str) -> ForgetReport:
        """Delete the user's messages, exchanges and ratings; scrub their words out of other
        users' stored prompts (group chats) and exclude those from training; mark the adapter
        versions trained on any of it as tainted."""
        async with self._sessions.begin() as session:
            return await forget_user(session, user_key)

    async def set_training_opt_out(self, user_key: str, opt_out: bool) -> None:
        async def work(session: AsyncSession) -> None:
            (await self._user(session, user_key)).training_opt_out = opt_out

        await self._retrying(work)

    # -- adapter versions ---------------------------------------------------------------------

    async def add_adapter_version(
        self,
        *,
        path: str,
        parent: int | None,
        base_model: str,
        exchange_ids: Iterable[int],
        metrics: dict[str, float],
        hyperparams: dict[str, Any],
        duration_s: float | None,
        training_run_id: int | None,
        status: AdapterStatus = AdapterStatus.READY,
        version: int | None = None,
        tainted: bool = False,
    ) -> AdapterVersion:
        async with self._sessions.begin() as session:
            if version is None:
                version = (await session.scalar(select(func.max(AdapterVersionRow.version)))) or 0
                version += 1
            row = AdapterVersionRow(
                version=version,
                path=path,
                parent=parent,
                status=str(status),
                base_model=base_model,
                exchange_ids=sorted(set(exchange_ids)),
                metrics=metrics,
                hyperparams=hyperparams,
                duration_s=duration_s,
                training_run_id=training_run_id,
                tainted=tainted,
            )
            session.add(row)
            await session.flush()
            return _adapter(row)

    async def next_adapter_version(self) -> int:
        async with self._sessions() as session:
            return ((await session.scalar(select(func.max(AdapterVersionRow.version)))) or 0) + 1

    async def adapter_versions(self) -> list[AdapterVersion]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(AdapterVersionRow).order_by(AdapterVersionRow.version)
            )
            return [_adapter(row) for row in rows]

    async def adapter_version(self, version: int) -> AdapterVersion | None:
        async with self._sessions() as session:
            row = await session.get(AdapterVersionRow, version)
            return _adapter(row) if row else None

    async def active_adapter(self) -> AdapterVersion | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(AdapterVersionRow).where(
                    AdapterVersionRow.status == str(AdapterStatus.ACTIVE)
                )
            )
            return _adapter(row) if row else None

    async def set_active_adapter(self, version: int | None) -> None:
        """Make ``version`` the only active one (None: serve the base model)."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(AdapterVersionRow)
                .where(AdapterVersionRow.status == str(AdapterStatus.ACTIVE))
                .values(status=str(AdapterStatus.READY))
            )
            if version is not None:
                row = await session.get_one(AdapterVersionRow, version)
                row.status = str(AdapterStatus.ACTIVE)

    async def set_adapter_status(self, version: int, status: AdapterStatus) -> None:
        async with self._sessions.begin() as session:
            (await session.get_one(AdapterVersionRow, version)).status = str(status)

    # -- training runs ------------------------------------------------------------------------

    async def start_training_run(self, trigger: str, requested_by: str | None, pid: int) -> int:
        """Record a new running training; raises TrainingAlreadyRunning if one is running."""
        async with self._sessions.begin() as session:
            running = await session.scalar(
                select(TrainingRunRow)
                .where(TrainingRunRow.status == str(RunStatus.RUNNING))
                .with_for_update()
            )
            if running is not None:
                raise TrainingAlreadyRunning(_run(running))
            row = TrainingRunRow(
                status=str(RunStatus.RUNNING), trigger=trigger, requested_by=requested_by, pid=pid
            )
            session.add(row)
            await session.flush()
            return row.id

    async def finish_training_run(
        self,
        run_id: int,
        status: RunStatus,
        message: str,
        *,
        adapter_version: int | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        async with self._sessions.begin() as session:
            row = await session.get_one(TrainingRunRow, run_id)
            row.status, row.message, row.finished_at = str(status), message, utcnow()
            row.adapter_version = adapter_version
            if report is not None:
                row.report = report

    async def running_training(self) -> TrainingRun | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(TrainingRunRow).where(TrainingRunRow.status == str(RunStatus.RUNNING))
            )
            return _run(row) if row else None

    async def training_runs(self, limit: int = 10) -> list[TrainingRun]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(TrainingRunRow).order_by(TrainingRunRow.id.desc()).limit(limit)
            )
            return [_run(row) for row in rows]

    async def interrupt_stale_runs(self, is_alive: Callable[[int | None], bool]) -> int:
        """Mark running runs whose process is gone as interrupted (after a crash or a kill)."""
        async with self._sessions.begin() as session:
            rows = (
                await session.scalars(
                    select(TrainingRunRow).where(TrainingRunRow.status == str(RunStatus.RUNNING))
                )
            ).all()
            stale = [row for row in rows if not is_alive(row.pid)]
            for row in stale:
                row.status, row.finished_at = str(RunStatus.INTERRUPTED), utcnow()
                row.message = "the process running it ended before it finished"
            return len(stale)

    # -- statistics ---------------------------------------------------------------------------

    async def counts(self) -> Counts:
        async with self._sessions() as session:
            users = await session.scalar(select(func.count()).select_from(User))
            chats = await session.scalar(select(func.count()).select_from(Chat))
            by_status: dict[str, int] = dict(
                (
                    await session.execute(
                        select(ExchangeRow.status, func.count()).group_by(ExchangeRow.status)
                    )
                ).all()
            )
            votes: dict[int, int] = dict(
                (
                    await session.execute(select(Rating.value, func.count()).group_by(Rating.value))
                ).all()
            )
        return Counts(
            users=users or 0,
            chats=chats or 0,
            exchanges=by_status.get("done", 0),
            failed_exchanges=by_status.get("failed", 0),
            ups=votes.get(1, 0),
            downs=votes.get(-1, 0),
        )

    async def daily_ratings(self) -> list[DailyRatings]:
        """Votes per day and per adapter version that wrote the rated reply."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Rating.updated_at, ExchangeRow.adapter_version, Rating.value).join(
                    ExchangeRow, ExchangeRow.id == Rating.exchange_id
                )
            )
            buckets: dict[tuple[str, int | None], list[int]] = {}
            for when, version, value in rows:
                bucket = buckets.setdefault((_aware(when).date().isoformat(), version), [0, 0])
                bucket[0 if value > 0 else 1] += 1
        return [
            DailyRatings(day, version, ups, downs)
            for (day, version), (ups, downs) in sorted(
                buckets.items(), key=lambda item: (item[0][0], item[0][1] or 0)
            )
        ]


def _rate_message(action: RateAction, vote: Vote) -> str:
    icon = "👍" if vote is Vote.UP else "👎"
    return {
        RateAction.STORED: f"Thanks! Rated {icon}.",
        RateAction.CHANGED: f"Changed your rating to {icon}.",
        RateAction.RETRACTED: "Rating removed.",
        RateAction.REFUSED: "That reply cannot be rated.",
    }[action]
