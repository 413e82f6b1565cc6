"""One reply on Telegram while it is written: a first message at once, then edits as the text
grows, paced per chat; a new message each time the text passes 4096 characters; the final
text with 👍/👎 on the last message.

Reading the reply and painting it are two tasks: generation never waits for Telegram (a long
flood wait only means fewer, bigger edits), and painting always shows the latest text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from telegram import InlineKeyboardMarkup
from telegram.error import BadRequest

from adapters.telegram.bot_api import Target, TelegramIO, describe
from adapters.telegram.format import Piece, split_reply
from bot.types import Draft, Reply, ReplyKind

log = logging.getLogger(__name__)

CURSOR = " ▌"  # shown at the end of a reply still being written
FAILED = "Sorry, something went wrong on my side while answering. Your message is saved."


class Pacer:
    """Spaces out the calls that change what a chat shows.

    Each caller books the next free slot of its chat, so two replies streaming in one group
    share the chat's budget instead of doubling it; and the interval is counted from the end
    of a call, so a slow request cannot bunch two edits together on Telegram's side.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._next: dict[int, float] = {}

    @contextlib.asynccontextmanager
    async def turn(self, chat_id: int) -> AsyncIterator[None]:
        """Wait for the chat's next slot, then run the block (the call)."""
        now = self._clock()
        slot = max(now, self._next.get(chat_id, now))
        self._next[chat_id] = slot + self._interval
        if len(self._next) > 4096:  # forget chats that have been quiet for a while
            self._next = {chat: at for chat, at in self._next.items() if at > now}
        if slot > now:
            await asyncio.sleep(slot - now)
        try:
            yield
        finally:
            done = self._clock() + self._interval
            self._next[chat_id] = max(self._next.get(chat_id, done), done)


class ReplyStream:
    """Shows one reply to ``target``.

    A final reply marked private (admin output) that arrives before anything was shown is not
    painted here: it is ``held`` for the adapter to deliver privately.
    """

    def __init__(
        self,
        io: TelegramIO,
        target: Target,
        pacer: Pacer,
        keyboard: Callable[[Reply], InlineKeyboardMarkup | None],
    ) -> None:
        self._io = io
        self._target = target
        self._pacer = pacer
        self._keyboard = keyboard
        self._sent: list[int] = []  # message ids, one per piece
        self._shown: list[tuple[Piece, str, bool]] = []  # (piece, suffix, has keyboard)
        self._latest = ""
        self._final: Reply | None = None
        self._ended = False
        self._changed = asyncio.Event()
        self.visible = asyncio.Event()  # set once the first message is on screen
        self.held: Reply | None = None

    @property
    def message_ids(self) -> list[int]:
        return list(self._sent)

    async def show(self, items: AsyncIterator[Draft | Reply]) -> Reply:
        """Read the reply stream to its end while painting it; returns the final Reply."""
        painter = asyncio.create_task(self._paint())
        try:
            await self._read(items)
        except BaseException:  # cancelled (shutdown): stop painting too
            painter.cancel()
            raise
        finally:
            self._ended = True
            self._changed.set()
        try:
            await painter
        except Exception as exc:
            # The reply is stored whatever happens here; say why it could not be shown.
            log.warning("could not show a reply in %s: %s", self._target.chat_id, describe(exc))
        assert self._final is not None
        return self._final

    async def _read(self, items: AsyncIterator[Draft | Reply]) -> None:
        # Close the core's generator here, not at garbage collection, so a cancelled reply is
        # marked as such in the database at once.
        close = getattr(items, "aclose", None)
        try:
            async for item in items:
                if isinstance(item, Draft):
                    self._latest = item.text
                else:
                    self._final = item
                self._changed.set()
        except Exception:
            log.exception("answering failed in chat %s", self._target.chat_id)
            self._final = Reply(FAILED, ReplyKind.ERROR)
        finally:
            if close is not None:
                await close()
        if self._final is None:
            self._final = Reply(FAILED, ReplyKind.ERROR)

    async def _paint(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._final is None and not self._latest.strip():
                if self._ended:
                    return
                continue
            final = self._final
            if final is not None and final.private and not self._sent and not self._target.private:
                self.held = final
                return
            async with self._pacer.turn(self._target.chat_id):
                final = self._final  # read after the wait: the text may have grown meanwhile
                if final is not None:
                    await self._render(final.text, self._keyboard(final), suffix="")
                    return
                await self._render(self._latest, None, suffix=CURSOR)

    async def _render(self, text: str, markup: InlineKeyboardMarkup | None, suffix: str) -> None:
        pieces = split_reply(text.strip() or "…")
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            end = suffix if i == last else ""
            keys = markup if i == last else None
            await self._put(i, piece, end, keys)
        for message_id in self._sent[len(pieces) :]:
            # Only an error replacing a long draft is shorter than what is on screen.
            with contextlib.suppress(Exception):
                await self._io.delete(self._target.chat_id, message_id)
        del self._sent[len(pieces) :], self._shown[len(pieces) :]

    async def _put(
        self, i: int, piece: Piece, suffix: str, markup: InlineKeyboardMarkup | None
    ) -> None:
        state = (piece, suffix, markup is not None)
        if i < len(self._sent):
            if self._shown[i] == state:
                return
            try:
                await self._io.edit(
                    self._target.chat_id, self._sent[i], piece, suffix=suffix, markup=markup
                )
                self._shown[i] = state
                return
            except BadRequest as exc:
                if "message to edit not found" not in exc.message.lower():
                    raise
                # The user deleted the draft: go on in a new message rather than stop.
        message = await self._io.send(self._target, piece, suffix=suffix, markup=markup)
        if i < len(self._sent):
            self._sent[i], self._shown[i] = message.message_id, state
        else:
            self._sent.append(message.message_id)
            self._shown.append(state)
        self.visible.set()
