"""What every platform adapter shares: the contracts, rating tokens, splitting."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from adapters.delivery import DeliveryLog
from bot.types import Draft, Incoming, RateOutcome, Reply, Vote, parse_id

RATING_PREFIX = "rate"
AGAIN_PREFIX = "again"
# ASCII digits only: ``\d`` alone would also match "٣", which ``int`` reads as 3.
_RATING = re.compile(r"rate:([0-9]{1,10}):(1|-1)", re.ASCII)
_AGAIN = re.compile(r"again:([0-9]{1,10})", re.ASCII)


class ChatCore(Protocol):
    """What an adapter may ask of the core (``bot.chat.service.ChatService`` implements it).

    Adapters never reach past it into storage, settings or the learning loop.
    """

    @property
    def deliveries(self) -> DeliveryLog:
        """Where updates are stored before the platform is told they arrived."""
        ...

    @property
    def admins(self) -> Sequence[str]:
        """The configured admin user keys (e.g. for a platform's per-user command menus)."""
        ...

    def should_answer(self, incoming: Incoming, bot_username: str | None = None) -> bool:
        """Private chats always; groups when mentioned, replied to, or given a command."""
        ...

    def respond(
        self, incoming: Incoming, *, bot_username: str | None = None
    ) -> AsyncIterator[Draft | Reply]:
        """Drafts of the growing reply, then one final Reply."""
        ...

    async def rate(
        self, exchange_id: int, user_key: str, vote: Vote, *, chat_key: str | None = None
    ) -> RateOutcome:
        """A 👍/👎 press: one vote per user per reply (again: retract; the other: change)."""
        ...

    async def reply_shown(self, exchange_id: int, platform_id: str) -> None:
        """Record the platform's id of the message that shows a reply (for reply chains)."""
        ...

    def regenerate(
        self, exchange_id: int, user_key: str, *, chat_key: str, platform: str
    ) -> AsyncIterator[Draft | Reply]:
        """A 🔄 press: drafts of another reply to the same prompt, then one final Reply (a
        notice when refused)."""
        ...

    async def react(
        self,
        chat_key: str,
        platform_id: str,
        user_key: str,
        *,
        added: Sequence[str] = (),
        removed: Sequence[str] = (),
    ) -> RateOutcome | None:
        """Reactions on the bot's message ``platform_id`` changed: votes, as buttons are."""
        ...


class Adapter(Protocol):
    """One platform. It holds the ChatCore (composition); it is not the bot."""

    platform: str

    async def run(self) -> None:
        """Serve until stopped (cancelled) or, for the console, until the input ends."""
        ...

    async def send(self, chat_key: str, text: str) -> None:
        """Send a message the core wants to say on its own (training progress)."""
        ...


def encode_rating(exchange_id: int, vote: Vote) -> str:
    """Button data for a 👍/👎 press: ``rate:<exchange_id>:<1|-1>`` (fits Telegram's 64 bytes
    and Discord's 100-character custom_id)."""
    return f"{RATING_PREFIX}:{exchange_id}:{int(vote)}"


def parse_rating(data: str | None) -> tuple[int, Vote] | None:
    """Inverse of encode_rating; None for anything malformed or forged (a client can send any
    data): an exchange id must be one the database can hold (``bot.types.parse_id``)."""
    match = _RATING.fullmatch(data or "")
    exchange_id = parse_id(match.group(1)) if match is not None else None
    if match is None or exchange_id is None:
        return None
    return exchange_id, Vote(int(match.group(2)))


def encode_again(exchange_id: int) -> str:
    """Button data for a 🔄 press: ``again:<exchange_id>``."""
    return f"{AGAIN_PREFIX}:{exchange_id}"


def parse_again(data: str | None) -> int | None:
    """Inverse of encode_again; None for anything malformed or forged."""
    match = _AGAIN.fullmatch(data or "")
    return parse_id(match.group(1)) if match is not None else None


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


_BREAKS = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")


def split_text(text: str, limit: int, length: Callable[[str], int] = len) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` (by ``length``), on the most natural
    boundary available: paragraph, line, sentence, clause, word; a hard cut only for a single
    over-long word. Nothing is dropped: joining the pieces gives back the text (up to the
    whitespace at the cut points)."""
    pieces: list[str] = []
    rest = text
    while length(rest) > limit:
        cut = _fit(rest, limit, length)
        window = rest[:cut]
        best = -1
        for sep in _BREAKS:
            at = window.rfind(sep)
            if at > 0 and at + len(sep) >= cut // 3:  # not a tiny first piece
                best = at + len(sep)
                break
        cut = best if best > 0 else cut
        piece = rest[:cut].rstrip()
        pieces.append(piece if piece else rest[:cut])
        rest = rest[cut:].lstrip("\n ")
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def _fit(text: str, limit: int, length: Callable[[str], int]) -> int:
    """The largest prefix length (in characters) whose ``length`` is at most ``limit``."""
    if length is len:
        return limit
    low, high = 0, min(len(text), limit)
    while low < high:
        middle = (low + high + 1) // 2
        if length(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return max(low, 1)
