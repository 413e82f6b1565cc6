"""Discord messages: which to answer, and answering them through the chat core.

DMs are always answered; in a server the bot answers when @-mentioned, when a message replies
to one of its own (a reply chain), or a text command. The bot's own messages and other bots'
are ignored (two bots answering each other would never stop). The core stores the
message before answering and applies the per-user rate limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from adapters.base import ChatCore
from adapters.discord.incoming import (
    incoming_from_message,
    unreadable_notice,
    unreadable_parts,
)
from adapters.discord.replies import (
    DiscordStream,
    DiscordSurface,
    channel_pacer,
    discord_stream,
    typing_indicator,
)
from adapters.discord.sdk import discord
from adapters.discord.signals import DiscordSignals
from adapters.streaming import InFlight
from bot.settings import DiscordSettings
from bot.types import Incoming, Reply, ReplyKind

log = logging.getLogger(__name__)


def delivery_platform(me: discord.abc.Snowflake) -> str:
    """The bot account's name in the delivery records."""
    return f"discord:{me.id}"


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
        service: ChatCore,
        settings: DiscordSettings,
        on_answered: Callable[[Incoming], None] | None = None,
    ) -> None:
        self._service = service
        self._settings = settings
        self._on_answered = on_answered  # told of each message the bot answers, before it does
        self._pacer = channel_pacer(settings.edit_interval_s)
        self._inflight = InFlight(settings.shutdown_grace_s)
        self.signals = DiscordSignals(service, self._pacer)  # 🔄 and reactions, same pace

    async def again(self, interaction: discord.Interaction[discord.Client], custom_id: str) -> None:
        """A 🔄 press: another reply over the pressed one (counted as an answer in flight)."""
        with self._inflight.track():
            await self.signals.again(interaction, custom_id)

    async def handle(
        self, message: discord.Message, me: discord.ClientUser, *, again: bool = False
    ) -> None:
        """Entry point for every MESSAGE_CREATE (discord.py runs each in its own task);
        ``again``: a message a crash interrupted, handled at the next start."""
        author = message.author
        if author.id == me.id or author.bot or message.type not in CHAT_TYPES:
            return
        with self._inflight.track():
            await self._handle(message, me, again)

    async def aclose(self) -> None:
        """At shutdown: let answers in flight finish (up to ``shutdown_grace_s``), then stop
        the rest (their exchanges are marked as cancelled)."""
        await self._inflight.drain()

    async def _handle(self, message: discord.Message, me: discord.ClientUser, again: bool) -> None:
        incoming = await incoming_from_message(message, me.id, self._settings.admin_role_id)
        platform, key = delivery_platform(me), str(message.id)
        if not self._service.should_answer(incoming, me.name):
            if again:  # recorded, now not to answer (a user told of a block): not every start
                await self._service.deliveries.finish(platform, key)
            return
        guild = str(message.guild.id) if message.guild is not None else ""
        place = {"channel_id": str(message.channel.id), "guild_id": guild}
        deliveries = self._service.deliveries
        if not await deliveries.receive_one(platform, key, place) and not again:
            return  # the gateway sent it twice: it is being (or was) answered
        await self._answer_stored(message, incoming, me)
        await deliveries.finish(platform, key)  # not reached when cut off: answered at start

    async def _answer_stored(
        self, message: discord.Message, incoming: Incoming, me: discord.ClientUser
    ) -> None:
        """Answer a message whose delivery is recorded (the core stores it, then answers)."""
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

    def _stream(self, message: discord.Message) -> tuple[DiscordSurface, DiscordStream]:
        """A reply in the message's channel, answering it."""
        private = message.guild is None
        surface = DiscordSurface(message.channel, private=private, reference=message)
        return surface, discord_stream(surface, self._pacer)

    async def _answer(self, message: discord.Message, incoming: Incoming, bot_name: str) -> None:
        surface, stream = self._stream(message)
        async with typing_indicator(message.channel):
            reply = await stream.show(self._service.respond(incoming, bot_username=bot_name))
        if stream.held is not None:
            await self._send_privately(message, stream, stream.held)
            return
        shown = stream.final_message
        if shown is None:
            return  # the driver logged why
        if reply.image_png:
            await surface.image(reply.image_png)
        if reply.rateable and reply.exchange_id is not None:
            await self._service.reply_shown(reply.exchange_id, str(shown.id))

    async def _send_privately(
        self, message: discord.Message, stream: DiscordStream, reply: Reply
    ) -> None:
        """Admin output asked for in a server channel (``@bot /status``) goes to a DM."""
        try:
            dm = DiscordSurface(await message.author.create_dm(), private=True)
            shown = await discord_stream(dm, self._pacer).finish(reply)
            if shown is not None and reply.image_png:
                await dm.image(reply.image_png)
        except discord.HTTPException as exc:
            log.info("could not DM user %s: %s", message.author.id, exc)
            shown = None
        note = SENT_PRIVATELY if shown is not None else NO_DM
        await stream.finish(Reply(note, ReplyKind.NOTICE))

    async def _notice(self, message: discord.Message, text: str) -> None:
        """A short note in reply to the message; best effort (the driver logs a failure)."""
        _, stream = self._stream(message)
        await stream.finish(Reply(text, ReplyKind.NOTICE))
