"""Discord messages and interactions → Incoming: chat keys, addressing, text, admin role.

Chat keys: a DM or a guild channel is ``discord:<channel id>``; a thread (or forum post) is
``discord:<parent channel id>:<thread id>``, so each thread is its own conversation while its key
still says where it lives. User keys are ``discord:<user id>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from adapters.discord.sdk import discord
from bot.types import Incoming

PLATFORM = "discord"

User = discord.User | discord.Member


def channel_ids(channel: object, channel_id: int) -> tuple[str, str | None]:
    """(chat_id, thread_id) of a channel: a thread is split off its parent channel."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return str(channel_id), None


def chat_key_of(channel: object, channel_id: int) -> str:
    """The chat key of a channel, as in Incoming.chat_key."""
    chat_id, thread_id = channel_ids(channel, channel_id)
    return f"{PLATFORM}:{chat_id}:{thread_id}" if thread_id else f"{PLATFORM}:{chat_id}"


def target_channel_id(chat_key: str) -> int:
    """The channel to post in for a chat key: the thread when there is one, else the channel."""
    platform, *ids = chat_key.split(":")
    if platform != PLATFORM or len(ids) not in (1, 2) or not all(i.isdigit() for i in ids):
        raise ValueError(f"{chat_key!r} is not a Discord chat key")
    return int(ids[-1])


def has_admin_role(user: User, role_id: int | None) -> bool:
    """Whether a guild member holds the configured admin role (never true in DMs)."""
    return (
        role_id is not None
        and isinstance(user, discord.Member)
        and user.get_role(role_id) is not None
    )


def _is_bot_role(role: discord.Role, me_id: int) -> bool:
    # Users often pick the bot's own managed role in the @-menu instead of the bot: same intent.
    return role.tags is not None and role.tags.bot_id == me_id


def mentions_me(message: discord.Message, me_id: int) -> bool:
    """The message @-mentions the bot (itself or its managed role)."""
    return any(u.id == me_id for u in message.mentions) or any(
        _is_bot_role(r, me_id) for r in message.role_mentions
    )


def message_text(message: discord.Message, me_id: int) -> str:
    """The text as the model should read it: mentions of the bot removed, other users' mentions
    written as their names (the raw ``<@123>`` means nothing to a language model)."""
    text = re.sub(rf"<@!?{me_id}>", "", message.content)
    for role in message.role_mentions:
        if _is_bot_role(role, me_id):
            text = text.replace(f"<@&{role.id}>", "")
    for user in message.mentions:
        if user.id != me_id:
            text = re.sub(rf"<@!?{user.id}>", "@" + user.display_name, text)
    return text.strip()


async def replies_to_me(message: discord.Message, me_id: int) -> bool:
    """The message is a reply to one of the bot's messages (a reply chain to follow)."""
    return await replied_id(message, me_id) is not None


async def replied_id(message: discord.Message, me_id: int) -> str | None:
    """The id of the bot's message this one replies to (None: not a reply to the bot)."""
    reference = message.reference
    if message.type is not discord.MessageType.reply or reference is None:
        return None
    target = reference.resolved
    if not isinstance(target, discord.Message):
        target = reference.cached_message
    if target is None and reference.message_id is not None:
        # Discord usually embeds the replied-to message; fetch it only when it did not.
        try:
            target = await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException:
            return None
    return str(target.id) if target is not None and target.author.id == me_id else None


async def incoming_from_message(
    message: discord.Message, me_id: int, admin_role_id: int | None
) -> Incoming:
    """The normalised form of a Discord message (addressing flags included)."""
    chat_id, thread_id = channel_ids(message.channel, message.channel.id)
    private = message.guild is None
    mentioned = mentions_me(message, me_id)
    reply_to = await replied_id(message, me_id)  # /better answers a reply of the bot's
    replied = not private and not mentioned and reply_to is not None
    return Incoming(
        platform=PLATFORM,
        chat_id=chat_id,
        user_id=str(message.author.id),
        user_name=message.author.display_name,
        text=message_text(message, me_id),
        message_id=str(message.id),
        is_private=private,
        mentions_bot=mentioned,
        reply_to_bot=replied,
        reply_to_id=reply_to,
        thread_id=thread_id,
        is_admin=has_admin_role(message.author, admin_role_id),
    )


def incoming_from_interaction(
    interaction: discord.Interaction[discord.Client], text: str, admin_role_id: int | None
) -> Incoming:
    """A slash command as the core's text command (``/persona be brief``)."""
    channel_id = interaction.channel_id or 0
    chat_id, thread_id = channel_ids(interaction.channel, channel_id)
    user = interaction.user
    return Incoming(
        platform=PLATFORM,
        chat_id=chat_id,
        user_id=str(user.id),
        user_name=user.display_name,
        text=text,
        message_id=str(interaction.id),
        is_private=interaction.guild_id is None,
        mentions_bot=True,  # a slash command is always addressed to the bot
        thread_id=thread_id,
        is_admin=has_admin_role(user, admin_role_id),
    )


def unreadable_parts(message: discord.Message) -> Sequence[str]:
    """What the bot cannot read in a message: attachments and stickers, by name."""
    parts = [f"the file {a.filename}" for a in message.attachments]
    parts += [f"the sticker {s.name}" for s in message.stickers]
    return parts


def unreadable_notice(parts: Sequence[str], *, answered: bool) -> str:
    """A polite note about attachments and stickers the bot cannot see."""
    listed = ", ".join(parts)
    if answered:
        return f"(I can only read text, so I answered your words and left out {listed}.)"
    return (
        f"I can only read text, so I cannot see {listed}. "
        "Tell me in words what you would like to talk about."
    )
