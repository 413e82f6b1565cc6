"""/forget in the database: everything of one user goes, their words are scrubbed out of other
users' stored prompts (group chats), and the adapter versions that learned from any of it are
marked as tainted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import AdapterVersionRow, Message, Rating, User, utcnow
from storage.models import Exchange as ExchangeRow

FORGOTTEN = "[forgotten]"  # what a scrubbed turn says instead

Quoted = Mapping[int, set[tuple[str, str]]]  # chat id → (role, content) turns to scrub


def quoted_forms(
    rows: Iterable[tuple[int, str, str, str | None]],
) -> dict[int, set[tuple[str, str]]]:
    """From messages (chat id, role, content, user name): the turns that quote them in stored
    prompts, by chat — bare, and ``Name: text`` as group prompts show a user's message."""
    quoted: dict[int, set[tuple[str, str]]] = {}
    for chat_id, role, content, name in rows:
        forms = quoted.setdefault(chat_id, set())
        forms.add((role, content))
        if role == "user" and name:
            forms.add((role, f"{name}: {content}"))
    return quoted


def scrub(chat_id: int, prompt: list[dict[str, str]], quoted: Quoted) -> list[dict[str, str]]:
    """``prompt`` (of chat ``chat_id``) with the quoted turns replaced by the placeholder."""
    forms = quoted.get(chat_id)
    if not forms:
        return list(prompt)
    return [
        {**t, "content": FORGOTTEN} if (t["role"], t["content"]) in forms else t for t in prompt
    ]


@dataclass(frozen=True)
class ForgetReport:
    """What /forget deleted, and the versions trained on the user's ratings."""

    messages: int
    exchanges: int
    ratings: int
    tainted_versions: tuple[int, ...]


async def _ids(session: AsyncSession, query: object) -> set[int]:
    return {i for i in (await session.scalars(query)).all() if i}  # type: ignore[call-overload]


async def forget_user(session: AsyncSession, user_key: str) -> ForgetReport:
    """Everything of ``user_key``, in the caller's transaction."""
    user = await session.scalar(select(User).where(User.key == user_key))
    if user is None:
        return ForgetReport(0, 0, 0, ())
    # Their exchanges, and the replies they wrote with /better (on others' prompts too).
    theirs = or_(ExchangeRow.user_id == user.id, ExchangeRow.corrected_by == user.id)
    exchange_ids = await _ids(session, select(ExchangeRow.id).where(theirs))
    rated_ids = await _ids(session, select(Rating.exchange_id).where(Rating.user_id == user.id))
    # Replies to the user's messages go with them: they quote the user's words.
    reply_ids = await _ids(
        session, select(ExchangeRow.reply_message_id).where(ExchangeRow.user_id == user.id)
    )
    scrubbed = await _scrub_others(session, user.id, sorted(reply_ids))
    tainted = await _taint(session, exchange_ids | rated_ids | scrubbed)
    ratings = await session.execute(delete(Rating).where(Rating.user_id == user.id))
    # Counted before: deleting a first reply cascades to its alternatives (regenerations,
    # corrections), which the statement's row count would then leave out.
    await session.execute(delete(ExchangeRow).where(theirs))
    messages = await session.execute(
        delete(Message).where(or_(Message.user_id == user.id, Message.id.in_(reply_ids)))
    )
    user.forgotten_at = utcnow()
    return ForgetReport(
        messages=messages.rowcount,  # type: ignore[attr-defined]
        exchanges=len(exchange_ids),
        ratings=ratings.rowcount,  # type: ignore[attr-defined]
        tainted_versions=tainted,
    )


async def _scrub_others(session: AsyncSession, user_id: int, reply_ids: Sequence[int]) -> set[int]:
    """In group chats other users' prompts quote the forgotten user (``Name: text``) and the
    bot's replies to them: replace those turns and exclude the exchanges from training."""
    own = await session.execute(
        select(Message.chat_id, Message.role, Message.content, Message.user_name).where(
            or_(Message.user_id == user_id, Message.id.in_(reply_ids))
        )
    )
    quoted = quoted_forms(own.all())
    if not quoted:
        return set()
    others = await session.scalars(
        select(ExchangeRow).where(ExchangeRow.chat_id.in_(quoted), ExchangeRow.user_id != user_id)
    )
    scrubbed = set()
    for row in others:
        prompt = scrub(row.chat_id, row.prompt, quoted)
        if prompt != row.prompt:
            row.prompt, row.training_excluded = prompt, True
            scrubbed.add(row.id)
    return scrubbed


async def _taint(session: AsyncSession, exchange_ids: set[int]) -> tuple[int, ...]:
    if not exchange_ids:
        return ()
    tainted = []
    for row in (await session.scalars(select(AdapterVersionRow))).all():
        if exchange_ids & set(row.exchange_ids):
            row.tainted = True
            tainted.append(row.version)
    return tuple(tainted)
