"""Discord messages: which to answer, and answering them through the ChatService.

DMs are always answered; in a server the bot answers when @-mentioned, when a message replies
to one of its own (a reply chain), or a text command. The bot's own messages and other bots'
are ignored (two bots answering each other would never stop). The ChatService stores the
message before answering and applies the per-user rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from adapters.discord.incoming import (
    incoming_from_message,
    unreadable_notice,
    unreadable_parts,
)
from adapters.discord.replies import ChannelPacer, ReplyStream, typing_indicator
from adapters.discord.sdk import discord
from bot.chat.service import ChatService
from bot.settings import DiscordSettings
from bot.types import Draft, Incoming, Reply, ReplyKind

log = logging.getLogger(__name__)

# Ordinary messages and replies; not joins, pins, thread-created notices and the like.
CHAT_TYPES = (discord.MessageType.default, discord.MessageType.reply)
BROKEN = (
    "Sorry, something went wrong on my side while answering. Your message is saved; "
    "please send it again in a moment."
)
SENT_PRIVATELY = "That answer is only for you: I sent it to you in a direct message."
NO_DM = (
    "That answer is only for you, but I cannot send you direct messages here. Use the slash "
    "command instead (its answer is shown only to you), or allow DMs from this server."
)


class MessageHandler:
    """Answers Discord messages; one instance per adapter, shared by all channels."""

    def __init__(
        self,
        service: ChatService,
        settings: DiscordSettings,
        on_answered: Callable[[Incoming], None] | None = None,
    ) -> None:
        self._service = service
        self._settings = settings
        self._on_answered = on_answered  # told of each message the bot answers, before it does
        self._pacer = ChannelPacer(settings.edit_interval_s)
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, message: discord.Message, me: discord.ClientUser) -> None:
        """Entry point for every MESSAGE_CREATE (discord.py runs each in its own task)."""
        author = message.author
        if author.id == me.id or author.bot or message.type not in CHAT_TYPES:
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._handle(message, me)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def aclose(self) -> None:
        """Stop answers in flight (at shutdown): their exchanges are marked as cancelled."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, message: discord.Message, me: discord.ClientUser) -> None:
        incoming = await incoming_from_message(message, me.id, self._settings.admin_role_id)
        if not self._service.should_answer(incoming, me.name):
            return
        if self._on_answered is not None:
            self._on_answered(incoming)
        extras = unreadable_parts(message)
        if extras and not incoming.text:
            await self._notice(message, unreadable_notice(extras, answered=False))
            return
        try:
            await self._answer(message, incoming, me.name)
        except discord.HTTPException as exc:
            log.warning("could not answer in channel %s: %s", message.channel.id, exc)
            return
        except Exception:
            log.exception("answering message %s failed", message.id)
            await self._notice(message, BROKEN)
            return
        if extras:
            await self._notice(message, unreadable_notice(extras, answered=True))

    async def _answer(self, message: discord.Message, incoming: Incoming, bot_name: str) -> None:
        channel = message.channel
        stream = ReplyStream(channel, self._pacer.edits(channel.id), reference=message)
        try:
            async with typing_indicator(channel):
                async for item in self._service.respond(incoming, bot_username=bot_name):
                    if isinstance(item, Draft):
                        await stream.draft(item.text)
                    else:
                        await self._finish(message, stream, item)
        finally:
            stream.close()

    async def _finish(self, message: discord.Message, stream: ReplyStream, reply: Reply) -> None:
        if reply.private and message.guild is not None:
            await self._send_privately(message, stream, reply)
            return
        shown = await stream.final(reply)
        if reply.rateable and reply.exchange_id is not None:
            await self._service.repo.set_reply_platform_id(reply.exchange_id, str(shown.id))

    async def _send_privately(
        self, message: discord.Message, stream: ReplyStream, reply: Reply
    ) -> None:
        """Admin output asked for in a server channel (``@bot /status``) goes to a DM."""
        try:
            dm = await message.author.create_dm()
            await ReplyStream(dm, self._pacer.edits(dm.id)).final(reply)
        except discord.HTTPException as exc:
            log.info("could not DM user %s: %s", message.author.id, exc)
            await stream.final(Reply(NO_DM, ReplyKind.NOTICE))
            return
        await stream.final(Reply(SENT_PRIVATELY, ReplyKind.NOTICE))

    async def _notice(self, message: discord.Message, text: str) -> None:
        """A short note in reply to the message; best effort."""
        with contextlib.suppress(discord.HTTPException):
            stream = ReplyStream(
                message.channel, self._pacer.edits(message.channel.id), reference=message
            )
            await stream.final(Reply(text, ReplyKind.NOTICE))
