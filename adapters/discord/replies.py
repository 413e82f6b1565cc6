"""What is Discord's own in showing a reply (the driver is ``adapters.streaming``): pieces of
2000 characters, the 👍/👎 view, the chart as a file, the typing indicator.

Discord allows 5 message edits per 5 s in a channel, whichever messages they touch, so edits
are paced per channel (not per message): two replies streaming in one channel share the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

from adapters.base import split_text
from adapters.discord.rating import rating_view
from adapters.discord.sdk import discord, ui
from adapters.streaming import MessageGone, Pacer, RateLimited, ReplyStream, Window
from bot.types import Reply

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # characters of one Discord message
# Discord allows 5 edits per 5 s in a channel. Exactly 5 s: the pacer counts each edit from
# when Discord answered it, after Discord counted it, so the round trip is the margin.
EDIT_WINDOW = Window(limit=5, seconds=5.0)
TYPING_EVERY_S = 5.0  # Discord shows "typing…" for about 10 s, or until the bot posts


async def send_pieces(channel: Any, text: str) -> None:
    """Post ``text`` in ``channel`` as Discord-sized messages, in order."""
    for piece in split_text(text, MESSAGE_LIMIT):
        await channel.send(piece)


def channel_pacer(interval_s: float) -> Pacer:
    """Drafts once per ``interval_s`` in a channel; edits within Discord's window."""
    return Pacer(interval_s, window=EDIT_WINDOW)


@contextlib.asynccontextmanager
async def typing_indicator(channel: discord.abc.Messageable) -> AsyncIterator[None]:
    """Show "typing…" while the body runs, in the background: it never delays the first text,
    and a failure (say, a missing permission) only stops the indicator, never the reply."""

    async def keep_typing() -> None:
        try:
            while True:
                await channel.typing()  # one POST /typing
                await asyncio.sleep(TYPING_EVERY_S)
        except discord.HTTPException as exc:
            log.debug("typing indicator stopped: %s", exc)

    task = asyncio.create_task(keep_typing(), name="discord-typing")
    try:
        yield
    finally:
        task.cancel()


DiscordStream = ReplyStream[str, discord.Message, ui.View]


def image_file(png: bytes) -> discord.File:
    """A PNG chart as an attachment."""
    return discord.File(io.BytesIO(png), filename="ratings.png")


class DiscordSurface:
    """One reply's channel on Discord, as the streaming driver's Surface: 2000-character
    pieces, no cursor, the first message a reply to the user's, 👍/👎 as a persistent view."""

    cursor = ""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        private: bool,
        reference: discord.Message | None = None,
    ) -> None:
        self.channel = channel
        self._private = private
        self._reference = reference

    @property
    def key(self) -> int:
        channel_id: int = getattr(self.channel, "id", 0)
        return channel_id

    @property
    def private(self) -> bool:
        return self._private

    def split(self, text: str) -> list[str]:
        return split_text(text, MESSAGE_LIMIT)

    def buttons(self, reply: Reply) -> ui.View | None:
        if reply.rateable and reply.exchange_id is not None:
            return rating_view(reply.exchange_id)
        return None

    async def send(
        self, piece: str, suffix: str, buttons: ui.View | None, *, first: bool
    ) -> discord.Message:
        extra: dict[str, Any] = {}
        if self._reference is not None and first:
            # Reply to the user's message; still post if it was deleted meanwhile.
            extra["reference"] = self._reference.to_reference(fail_if_not_exists=False)
        if buttons is not None:
            extra["view"] = buttons
        return await self.channel.send(piece + suffix, **extra)

    async def edit(
        self, message: discord.Message, piece: str, suffix: str, buttons: ui.View | None
    ) -> discord.Message:
        try:
            if buttons is None:
                return await message.edit(content=piece + suffix)
            return await message.edit(content=piece + suffix, view=buttons)
        except discord.NotFound as exc:
            raise MessageGone from exc
        except discord.RateLimited as exc:  # over discord.py's max_ratelimit_timeout
            raise RateLimited(exc.retry_after) from exc
        except discord.HTTPException as exc:
            # discord.py gives up after 5 tries that each got a 429 (it sleeps retry_after
            # between them), and raises the last answer.
            if exc.status == 429:
                raise RateLimited(_retry_after(exc)) from exc
            raise

    async def delete(self, message: discord.Message) -> None:
        await message.delete()

    async def image(self, png: bytes) -> None:
        """The chart of /stats, after the text."""
        await self.channel.send(file=image_file(png))


def _retry_after(exc: discord.HTTPException) -> float:
    """The wait a 429 asks for: its Retry-After header, else a whole window."""
    header = getattr(exc.response, "headers", {}).get("Retry-After")
    try:
        return float(header) if header is not None else EDIT_WINDOW.seconds
    except ValueError:
        return EDIT_WINDOW.seconds


def discord_stream(surface: DiscordSurface, pacer: Pacer) -> DiscordStream:
    """A reply stream into the surface's channel."""
    return ReplyStream(surface, pacer)
