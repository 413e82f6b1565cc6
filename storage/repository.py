"""The queries the core needs, returning bot.types values (never ORM rows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.types import (
    ChatInfo,
    Exchange,
    HistoryMessage,
    RateAction,
    RateOutcome,
    Turn,
    Vote,
    messages,
)
from storage.abtests import ABTests
from storage.adapter_store import AdapterStore
from storage.coordination import Coordination, coordination_for
from storage.curation import Curation
from storage.dashboard import Dashboard
from storage.db import aware, session_factory
from storage.deliveries import Deliveries
from storage.forget import ForgetReport, forget_user
from storage.models import Chat, Message, Rating, User, utcnow
from storage.models import Exchange as ExchangeRow
from storage.signals import Signals
from storage.stats import Stats
from storage.training_rows import TrainingRows, exchange
from storage.training_runs import TrainingRuns


class _Unset:
    """Marks an argument not given (None is a meaningful value: the base model)."""


UNSET = _Unset()


class Repository:
    """Async repository over one engine. Each method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
        self.ab = ABTests(self._sessions)  # A/B tests of adapter versions
        self.adapters = AdapterStore(self._sessions)
        self.runs = TrainingRuns(self._sessions)
        self.training = TrainingRows(self._sessions)  # what training may read
        self.stats = Stats(self._sessions)
        self.curation = Curation(self._sessions)  # operator decisions and the audit log
        self.dashboard = Dashboard(self._sessions)  # the web dashboard's read queries
        # Roles, chat turns and user limits shared by the serving processes on this database.
        self.coordination: Coordination = coordination_for(engine, self._sessions)
        self.deliveries = Deliveries(self._sessions, self.coordination)  # stored, then confirmed
        self.signals = Signals(self._sessions)  # 🔄 regenerations and /better corrections

    async def aclose(self) -> None:
        await self.coordination.aclose()
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
        self,
        chat_key: str,
        user_key: str,
        user_name: str,
        text: str,
        platform_id: str | None,
        *,
        source_key: str | None = None,
    ) -> int:
        """Store an incoming message (before it is answered); returns its id. A message with a
        ``source_key`` stored before (delivered again after a crash) is not stored twice: the
        first copy's id is returned."""

        async def work(session: AsyncSession) -> int:
            if source_key is not None:
                known = await session.scalar(
                    select(Message.id).where(Message.source_key == source_key)
                )
                if known is not None:
                    return int(known)
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
                source_key=source_key,
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
                created_at=aware(row.created_at),
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
                prompt=messages(prompt),
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
        return exchange(*found)

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
                    ExchangeRow.source == "model",  # a /better correction is not my reply
                    Message.conversation == Chat.conversation,
                )
                .order_by(ExchangeRow.id.desc())
                .limit(1)
            )

    # -- ratings ------------------------------------------------------------------------------

    async def rate(
        self, exchange_id: int, user_key: str, vote: Vote, *, source: str = "button"
    ) -> RateOutcome:
        """One vote per user per exchange: a new vote is stored, the other one changes it, the
        same one again retracts it (a button press)."""

        def decide(current: Vote | None) -> Vote | None:
            return None if current is vote else vote

        return await self._vote(exchange_id, user_key, vote, decide, source)

    async def set_vote(
        self, exchange_id: int, user_key: str, vote: Vote | None, *, source: str
    ) -> RateOutcome:
        """Set the user's one vote on the exchange to ``vote`` (None: withdraw it), whatever it
        was (a reaction replaces the user's earlier vote; removing it withdraws it)."""
        shown = vote if vote is not None else Vote.UP  # only names the icon of a message

        def decide(_current: Vote | None) -> Vote | None:
            return vote

        return await self._vote(exchange_id, user_key, shown, decide, source)

    async def _vote(
        self,
        exchange_id: int,
        user_key: str,
        vote: Vote,
        decide: Callable[[Vote | None], Vote | None],
        source: str,
    ) -> RateOutcome:
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
            before = None if rating is None else Vote(rating.value)
            after: Vote | None = decide(before)
            action = await _store_vote(session, rating, exchange_id, user.id, after, source)
            await session.flush()
            ups, downs = await self._counts(session, exchange_id)
            shown = after if after is not None else vote
            return RateOutcome(action, exchange_id, after, _rate_message(action, shown), ups, downs)

        result: RateOutcome = await self._retrying(work)
        return result

    @staticmethod
    async def _counts(session: AsyncSession, exchange_id: int) -> tuple[int, int]:
        rows = await session.execute(
            select(Rating.value, func.count())
            .where(Rating.exchange_id == exchange_id)
            .group_by(Rating.value)
        )
        counts = dict(rows.all())
        return counts.get(1, 0), counts.get(-1, 0)

    async def user_vote(self, exchange_id: int, user_key: str) -> Vote | None:
        async with self._sessions() as session:
            value = await session.scalar(
                select(Rating.value)
                .join(User, User.id == Rating.user_id)
                .where(Rating.exchange_id == exchange_id, User.key == user_key)
            )
        return None if value is None else Vote(value)

    async def forget_user(self, user_key: str) -> ForgetReport:
        """Delete the user's messages, exchanges and ratings; scrub their words out of other
        users' stored prompts (group chats) and exclude those from training; mark the adapter
        versions trained on any of it as tainted."""
        async with self._sessions.begin() as session:
            return await forget_user(session, user_key)

    async def training_opted_out(self, user_key: str) -> bool:
        """Whether the user keeps their messages and ratings out of training."""
        async with self._sessions() as session:
            value = await session.scalar(select(User.training_opt_out).where(User.key == user_key))
        return bool(value)

    async def set_training_opt_out(self, user_key: str, opt_out: bool) -> None:
        async def work(session: AsyncSession) -> None:
            (await self._user(session, user_key)).training_opt_out = opt_out

        await self._retrying(work)


async def _store_vote(
    session: AsyncSession,
    rating: Rating | None,
    exchange_id: int,
    user_id: int,
    vote: Vote | None,
    source: str,
) -> RateAction:
    """Make the user's stored vote ``vote`` (None: none); what that did."""
    if rating is None:
        if vote is None:
            return RateAction.RETRACTED  # nothing was there: nothing to take back
        session.add(
            Rating(exchange_id=exchange_id, user_id=user_id, value=int(vote), source=source)
        )
        return RateAction.STORED
    if vote is None:
        await session.delete(rating)
        return RateAction.RETRACTED
    # The same vote given another way (a 👍 reaction on a reply 👍'd by button) is kept as is.
    action = RateAction.STORED if rating.value == int(vote) else RateAction.CHANGED
    rating.value, rating.updated_at, rating.source = int(vote), utcnow(), source
    return action


def _rate_message(action: RateAction, vote: Vote) -> str:
    icon = "👍" if vote is Vote.UP else "👎"
    return {
        RateAction.STORED: f"Thanks! Rated {icon}.",
        RateAction.CHANGED: f"Changed your rating to {icon}.",
        RateAction.RETRACTED: "Rating removed.",
        RateAction.REFUSED: "That reply cannot be rated.",
    }[action]
