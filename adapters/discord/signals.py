"""Signals besides 👍/👎 on Discord: the 🔄 button (another reply, written over the old one in
the same message) and reactions on the bot's replies, counted as votes."""

from __future__ import annotations

import logging

from adapters.base import ChatCore, parse_again
from adapters.discord.incoming import PLATFORM, chat_key_of
from adapters.discord.replies import DiscordSurface
from adapters.discord.sdk import discord
from adapters.streaming import Pacer, ReplyStream, unless_refused

log = logging.getLogger(__name__)

FORGED = "That button is not one of mine (or it was changed), so nothing happened."


class DiscordSignals:
    """🔄 presses and reactions, through the chat core."""

    def __init__(self, service: ChatCore, pacer: Pacer) -> None:
        self._service = service
        self._pacer = pacer

    async def again(self, interaction: discord.Interaction[discord.Client], custom_id: str) -> None:
        """Acknowledge at once (Discord allows 3 s), then stream another reply over the
        pressed message; a refusal is answered privately and the old reply stays."""
        await interaction.response.defer()
        exchange_id, message = parse_again(custom_id), interaction.message
        if exchange_id is None or message is None:
            await interaction.followup.send(FORGED, ephemeral=True)
            return
        items = self._service.regenerate(
            exchange_id,
            f"{PLATFORM}:{interaction.user.id}",
            chat_key=chat_key_of(interaction.channel, interaction.channel_id or 0),
            platform=PLATFORM,
        )
        refused, items = await unless_refused(items)
        if refused is not None:
            await interaction.followup.send(refused.text, ephemeral=True)
            return
        surface = DiscordSurface(message.channel, private=interaction.guild_id is None)
        stream = ReplyStream(surface, self._pacer, reuse=[message])
        reply = await stream.show(items)
        shown = stream.final_message
        if reply.rateable and reply.exchange_id is not None and shown is not None:
            await self._service.reply_shown(reply.exchange_id, str(shown.id))

    async def reaction(
        self, payload: discord.RawReactionActionEvent, channel: object, me_id: int
    ) -> None:
        """A reaction added to or removed from a message: a vote when the message is one of
        the bot's replies and the emoji counts. ``channel``: the cached channel, if any (a
        thread's chat key names its parent too)."""
        if payload.user_id == me_id or (payload.member is not None and payload.member.bot):
            return
        emoji = payload.emoji.name
        if not emoji or payload.emoji.id is not None:  # a server's custom emoji: no vote
            return
        added = payload.event_type == "REACTION_ADD"
        outcome = await self._service.react(
            chat_key_of(channel, payload.channel_id),
            str(payload.message_id),
            f"{PLATFORM}:{payload.user_id}",
            added=[emoji] if added else [],
            removed=[] if added else [emoji],
        )
        if outcome is not None:
            log.debug("reaction on %s: %s", payload.message_id, outcome.action.value)
