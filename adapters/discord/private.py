"""Private messages the core sends on its own to a Discord user (training progress and the
gate's verdict for the admin who ran /finetune in a server channel): by direct message.

A user key ``discord:<user id>`` names the user; the DM channel is opened once (discord.py keeps
it). When Discord refuses the DM (the user does not accept direct messages from server members),
the channel where they last gave a command hears a short note asking them to allow DMs: never
the message itself, which is admin output (metrics) not meant for the channel.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from adapters.discord.incoming import PLATFORM, target_channel_id
from adapters.discord.replies import send_pieces
from adapters.discord.sdk import discord
from bot.types import Incoming

log = logging.getLogger(__name__)

DMS_CLOSED = (
    "<@{user_id}> I could not send you the training updates by direct message: Discord "
    "refused it. Allow direct messages from this server's members (server menu → Privacy "
    "Settings → Direct Messages), then see /status and /adapters."
)
_REMEMBERED = 1000  # users whose last command channel is kept (the oldest are forgotten)


def user_id_of(user_key: str) -> int:
    """The Discord user id in a user key ``discord:<user id>``."""
    platform, _, user_id = user_key.partition(":")
    if platform != PLATFORM or not user_id.isdigit():
        raise ValueError(f"{user_key!r} is not a Discord user key")
    return int(user_id)


class DirectMessages:
    """Sends to users by DM; remembers where each last gave a command, to say when DMs fail."""

    def __init__(self) -> None:
        self._asked_in: OrderedDict[str, str] = OrderedDict()  # user key -> chat key

    def remember(self, incoming: Incoming) -> None:
        """Note the server channel of a command (``/finetune``): where a refused DM is told."""
        if incoming.is_private or not incoming.text.startswith("/"):
            return
        self._asked_in[incoming.user_key] = incoming.chat_key
        self._asked_in.move_to_end(incoming.user_key)
        while len(self._asked_in) > _REMEMBERED:
            self._asked_in.popitem(last=False)

    async def send(self, client: discord.Client, user_key: str, text: str) -> None:
        """DM ``text`` (split into Discord-sized pieces); if Discord refuses, log it and post
        the note once in the channel of the user's last command."""
        user_id = user_id_of(user_key)
        try:
            channel = await client.create_dm(discord.Object(id=user_id))  # cached after once
            await send_pieces(channel, text)
        except discord.HTTPException as exc:
            # Status and Discord's error code only: enough to tell "DMs closed" (403, 50007).
            log.warning(
                "could not send a direct message to Discord user %s (HTTP %s, code %s)",
                user_id,
                exc.status,
                exc.code,
            )
            await self._tell_channel(client, user_key, user_id)

    async def _tell_channel(self, client: discord.Client, user_key: str, user_id: int) -> None:
        # Popped: one note per command, not one per progress message of the same run.
        chat_key = self._asked_in.pop(user_key, None)
        if chat_key is None:
            log.info("no channel to tell Discord user %s that their DMs are closed", user_id)
            return
        channel = client.get_partial_messageable(target_channel_id(chat_key))
        try:
            await channel.send(DMS_CLOSED.format(user_id=user_id))
        except discord.HTTPException as exc:
            log.warning(
                "could not post the DMs-closed note in %s (HTTP %s, code %s)",
                chat_key,
                exc.status,
                exc.code,
            )
