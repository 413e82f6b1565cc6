"""Telegram objects ↔ the core's values: messages as Incoming, chat keys, 👍/👎 keyboards."""

from __future__ import annotations

import re
from collections.abc import Sequence

from telegram import (
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MaybeInaccessibleMessage,
    Message,
    MessageEntity,
    User,
)

from adapters.base import encode_again, encode_rating
from adapters.telegram.bot_api import Target
from bot.types import Incoming, RateOutcome, Vote

PLATFORM = "telegram"
AGAIN_LABEL = "🔄 another reply"


def thread_of(message: MaybeInaccessibleMessage) -> int | None:
    """The forum topic of a message. Replies in plain supergroups carry a thread id too, but
    only a topic makes a separate conversation."""
    if isinstance(message, Message) and message.is_topic_message:
        return message.message_thread_id
    return None


def chat_key_of(message: MaybeInaccessibleMessage) -> str:
    """The core's key of the conversation a message belongs to (chat, and topic if any)."""
    thread = thread_of(message)
    base = f"{PLATFORM}:{message.chat.id}"
    return f"{base}:{thread}" if thread is not None else base


def target_of_key(chat_key: str) -> Target:
    """``telegram:<chat>[:<topic>]`` → where to send; ValueError for anything else."""
    platform, _, rest = chat_key.partition(":")
    chat, _, thread = rest.partition(":")
    if platform != PLATFORM or not re.fullmatch(r"-?\d+", chat) or not re.fullmatch(r"\d*", thread):
        raise ValueError(f"not a Telegram chat key: {chat_key!r}")
    return Target(int(chat), int(thread) if thread else None)


def reply_target(message: Message) -> Target:
    """Answer in the message's chat and topic; in groups as a reply, so it is clear to whom."""
    private = message.chat.type == Chat.PRIVATE
    return Target(
        message.chat.id,
        thread_of(message),
        None if private else message.message_id,
    )


def entity_texts(message: Message, kinds: Sequence[str]) -> list[tuple[MessageEntity, str]]:
    """The message's entities of ``kinds``, each with its text. Telegram counts offsets in
    UTF-16 units; PTB's ``parse_entities`` encodes the text strictly and fails on a lone
    surrogate (half an emoji from a broken client), so the units are cut here, leniently."""
    units = (message.text or "").encode("utf-16-le", "surrogatepass")

    def text_of(entity: MessageEntity) -> str:
        start, end = 2 * entity.offset, 2 * (entity.offset + entity.length)
        return units[start:end].decode("utf-16-le", "surrogatepass")

    return [(entity, text_of(entity)) for entity in message.entities if entity.type in kinds]


def mentions(message: Message, me: User) -> bool:
    """Whether the message names the bot: ``@username`` or a mention of its account."""
    username = (me.username or "").lower()
    for entity, text in entity_texts(message, (MessageEntity.MENTION, MessageEntity.TEXT_MENTION)):
        if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == me.id:
            return True
        if entity.type == MessageEntity.MENTION and username and text.lower() == f"@{username}":
            return True
    return False


def replies_to(message: Message, me: User) -> bool:
    """Whether the message answers one of the bot's. In a forum, a topic's messages "reply"
    to the topic's opening service message; that is not a reply to the bot."""
    original = message.reply_to_message
    return (
        original is not None
        and original.from_user is not None
        and original.from_user.id == me.id
        and original.forum_topic_created is None
    )


def to_incoming(message: Message, me: User) -> Incoming | None:
    """The core's Incoming for a text message; None when it has no sender or no text."""
    if message.text is None:
        return None
    return sender_of(message, me)


def sender_of(message: Message, me: User) -> Incoming | None:
    """The core's Incoming for any message with a sender, its text empty when it has none (a
    photo, a sticker): enough for the access check of what the core cannot read."""
    user = message.from_user
    if user is None:
        return None
    text = message.text or ""
    named = mentions(message, me)
    if named and me.username and not text.startswith("/"):
        # "@bot what is 2+2?" asks "what is 2+2?": the name is addressing, not content.
        stripped = re.sub(rf"(?i)@{re.escape(me.username)}\b", "", text).strip()
        text = stripped or text
    return Incoming(
        platform=PLATFORM,
        chat_id=str(message.chat.id),
        user_id=str(user.id),
        user_name=user.full_name,
        text=text,
        message_id=str(message.message_id),
        is_private=message.chat.type == Chat.PRIVATE,
        mentions_bot=named,
        reply_to_bot=replies_to(message, me),
        reply_to_id=_replied_id(message, me),
        thread_id=str(thread) if (thread := thread_of(message)) is not None else None,
    )


def _replied_id(message: Message, me: User) -> str | None:
    """The id of the bot's message this one answers (None: not a reply to the bot)."""
    original = message.reply_to_message
    return str(original.message_id) if original is not None and replies_to(message, me) else None


def rating_keyboard(
    exchange_id: int, ups: int = 0, downs: int = 0, mine: Vote | None = None
) -> InlineKeyboardMarkup:
    """👍/👎 under a reply, with the counts once there are votes and ✓ on ``mine``; 🔄 on a
    row of its own asks for another reply."""

    def label(icon: str, count: int, vote: Vote) -> str:
        return icon + (f" {count}" if count else "") + (" ✓" if mine is vote else "")

    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    label("👍", ups, Vote.UP), callback_data=encode_rating(exchange_id, Vote.UP)
                ),
                InlineKeyboardButton(
                    label("👎", downs, Vote.DOWN),
                    callback_data=encode_rating(exchange_id, Vote.DOWN),
                ),
            ],
            [InlineKeyboardButton(AGAIN_LABEL, callback_data=encode_again(exchange_id))],
        ]
    )


def keyboard_after(outcome: RateOutcome, *, private: bool) -> InlineKeyboardMarkup:
    """The keyboard after a press. The ✓ shows the presser's own vote, so only in a private
    chat: in a group everyone sees the same buttons, and a ✓ would mislead all but one."""
    mine = outcome.current if private else None
    return rating_keyboard(outcome.exchange_id, outcome.ups, outcome.downs, mine)
