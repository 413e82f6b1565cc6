"""Showing a reply on Discord: streamed by message edits, split at 2000 characters, 👍/👎 last.

Discord allows 5 message edits per 5 s in a channel, whichever messages they touch, so edits
are paced per channel (not per message): two replies streaming in one channel share the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from adapters.base import EditThrottle, split_text
from adapters.discord.rating import rating_view
from adapters.discord.sdk import discord, ui
from bot.types import Reply

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # characters of one Discord message
TYPING_EVERY_S = 5.0  # Discord shows "typing…" for about 10 s, or until the bot posts


async def send_pieces(channel: Any, text: str) -> None:
    """Post ``text`` in ``channel`` as Discord-sized messages, in order."""
    for piece in split_text(text, MESSAGE_LIMIT):
        await channel.send(piece)


class ChannelEdits:
    """Discord's edit limit in one channel: at most 5 edits in any 5 s, whichever messages.

    Drafts are paced (one per ``interval_s``, counted from the first message too) and leave
    one slot free for each reply still streaming in the channel, so a final edit, which must
    land, finds a slot at once instead of waiting out the window behind drafts.
    """

    LIMIT = 5
    WINDOW_S = 5.05  # a little over 5 s, for clock skew against Discord's own window

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pace = EditThrottle(interval_s, clock)
        self._times: deque[float] = deque()
        self.streaming = 0  # replies in this channel shown as drafts, not final yet

    def _free(self) -> int:
        now = self._clock()
        while self._times and now - self._times[0] >= self.WINDOW_S:
            self._times.popleft()
        return self.LIMIT - len(self._times)

    def draft_due(self) -> bool:
        reserved = min(self.streaming, self.LIMIT - 1)
        return self._pace.due() and self._free() > reserved

    def sent(self) -> None:
        """A new message was posted: the next draft edit waits a full interval."""
        self._pace.mark()

    def take_draft(self) -> None:
        """Count a draft edit (checked with draft_due, with no await in between)."""
        self._pace.mark()
        self._times.append(self._clock())

    async def take(self) -> None:
        """Wait for a free slot and count an edit (final text, which must be shown)."""
        while True:
            if self._free() > 0:
                self._times.append(self._clock())
                return
            await asyncio.sleep(self.WINDOW_S - (self._clock() - self._times[0]))


class ChannelPacer:
    """One ChannelEdits per channel id."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._channels: dict[int, ChannelEdits] = {}

    def edits(self, channel_id: int) -> ChannelEdits:
        found = self._channels.get(channel_id)
        if found is None:
            found = self._channels[channel_id] = ChannelEdits(self._interval_s)
        return found


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


def image_file(png: bytes) -> discord.File:
    return discord.File(io.BytesIO(png), filename="ratings.png")


class ReplyStream:
    """One reply in one channel: drafts become paced edits, the final text gets the
    buttons. Text over 2000 characters continues in further messages, never truncated."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        edits: ChannelEdits,
        *,
        reference: discord.Message | None = None,
    ) -> None:
        self._channel = channel
        self._edits = edits
        self._reference = reference
        self.messages: list[discord.Message] = []
        self._shown: list[str] = []
        self._streaming = False

    async def draft(self, text: str) -> None:
        """Show the reply so far: the first piece at once, later ones at the channel's pace."""
        text = text.strip()
        if not text or (self.messages and not self._edits.draft_due()):
            return
        try:
            await self._show(split_text(text, MESSAGE_LIMIT), final=False)
        except discord.HTTPException as exc:
            # A lost draft is harmless: the final text replaces it.
            log.warning("could not show a draft: %s", exc)
        if self.messages and not self._streaming:
            self._streaming = True
            self._edits.streaming += 1

    def close(self) -> None:
        """The reply is final (or abandoned): release its reserved edit slot."""
        if self._streaming:
            self._streaming = False
            self._edits.streaming -= 1

    async def final(self, reply: Reply) -> discord.Message:
        """Show the final text (with 👍/👎 when rateable, and the chart when there is one);
        returns the message carrying the buttons."""
        pieces = split_text(reply.text.strip() or "…", MESSAGE_LIMIT)
        view: ui.View | None = None
        if reply.rateable and reply.exchange_id is not None:
            view = rating_view(reply.exchange_id)
        await self._show(pieces, final=True, view=view)
        await self._drop_extra(len(pieces))
        self.close()
        last = self.messages[len(pieces) - 1]
        if reply.image_png:
            await self._channel.send(file=image_file(reply.image_png))
        return last

    async def _show(self, pieces: list[str], *, final: bool, view: ui.View | None = None) -> None:
        for index, piece in enumerate(pieces):
            piece_view = view if index == len(pieces) - 1 else None
            if index >= len(self.messages):
                self._edits.sent()
                self.messages.append(await self._send(piece, piece_view))
                self._shown.append(piece)
            elif piece != self._shown[index] or piece_view is not None:
                if final:
                    await self._edits.take()
                else:
                    self._edits.take_draft()  # no await since draft_due: concurrent-safe
                self.messages[index] = await self._edit(self.messages[index], piece, piece_view)
                self._shown[index] = piece

    async def _send(self, text: str, view: ui.View | None) -> discord.Message:
        extra: dict[str, Any] = {}
        if self._reference is not None and not self.messages:
            # Reply to the user's message; still post if it was deleted meanwhile.
            extra["reference"] = self._reference.to_reference(fail_if_not_exists=False)
        if view is not None:
            extra["view"] = view
        return await self._channel.send(text, **extra)

    @staticmethod
    async def _edit(message: discord.Message, text: str, view: ui.View | None) -> discord.Message:
        if view is None:
            return await message.edit(content=text)
        return await message.edit(content=text, view=view)

    async def _drop_extra(self, keep: int) -> None:
        # The final text can be shorter than the last draft (a failure replaced it).
        for message in self.messages[keep:]:
            with contextlib.suppress(discord.HTTPException):
                await message.delete()
        del self.messages[keep:], self._shown[keep:]
