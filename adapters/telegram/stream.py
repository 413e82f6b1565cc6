"""What is Telegram's own in showing a reply (the driver is ``adapters.streaming``): HTML
pieces of at most 4096 UTF-16 units, a cursor on drafts, the 👍/👎 keyboard, a draft the
user deleted ("message to edit not found") going on in a new message, and a reply's first
message recorded when sent, so the same update answered again after a crash edits it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from telegram import InlineKeyboardMarkup
from telegram.error import BadRequest

from adapters.streaming import MessageGone, Pacer, ReplyStream
from adapters.telegram.bot_api import Target, TelegramIO
from adapters.telegram.format import Piece, split_reply
from adapters.telegram.updates import rating_keyboard
from bot.types import Reply

CURSOR = " ▌"  # shown at the end of a reply still being written

TelegramStream = ReplyStream[Piece, int, InlineKeyboardMarkup]


class TelegramSurface:
    """One reply's chat (and topic) on Telegram, as the streaming driver's Surface."""

    cursor = CURSOR

    def __init__(
        self,
        io: TelegramIO,
        target: Target,
        *,
        reuse: int | None = None,
        on_first: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._io = io
        self.target = target
        self._reuse = reuse  # the first message of this reply, sent before a restart
        self._on_first = on_first  # told the first message's id once it is sent

    @property
    def key(self) -> int:
        return self.target.chat_id

    @property
    def private(self) -> bool:
        return self.target.private

    def split(self, text: str) -> list[Piece]:
        return split_reply(text)

    def buttons(self, reply: Reply) -> InlineKeyboardMarkup | None:
        return rating_keyboard(reply.exchange_id) if reply.rateable and reply.exchange_id else None

    # first: the streaming driver passes it by name; Telegram sends every piece the same way.
    async def send(
        self,
        piece: Piece,
        suffix: str,
        buttons: InlineKeyboardMarkup | None,
        *,
        first: bool,
    ) -> int:
        if first and self._reuse is not None:
            reuse, self._reuse = self._reuse, None
            try:
                return await self.edit(reuse, piece, suffix, buttons)
            except MessageGone:
                pass  # deleted meanwhile: a new message, as for any deleted draft
        message = await self._io.send(self.target, piece, suffix=suffix, markup=buttons)
        if first and self._on_first is not None:
            await self._on_first(message.message_id)
        return message.message_id

    async def edit(
        self, message: int, piece: Piece, suffix: str, buttons: InlineKeyboardMarkup | None
    ) -> int:
        try:
            await self._io.edit(self.target.chat_id, message, piece, suffix=suffix, markup=buttons)
        except BadRequest as exc:
            if "message to edit not found" in exc.message.lower():
                raise MessageGone from exc
            raise
        return message

    async def delete(self, message: int) -> None:
        await self._io.delete(self.target.chat_id, message)


def telegram_stream(
    io: TelegramIO,
    target: Target,
    pacer: Pacer,
    *,
    reuse: int | None = None,
    on_first: Callable[[int], Awaitable[None]] | None = None,
) -> TelegramStream:
    """A reply stream into ``target``; ``reuse``: its first message is that one, edited."""
    return ReplyStream(TelegramSurface(io, target, reuse=reuse, on_first=on_first), pacer)
