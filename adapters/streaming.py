"""Showing a reply while it is written, the same way on every platform.

A first message as soon as there is text, then edits as the text grows, paced per chat; a new
message each time the text passes the platform's limit; the final text with 👍/👎 on the last
message. Reading the core's reply and painting it are two tasks: generation never waits for the
platform (a slow chat only means fewer, bigger edits), and painting always shows the latest text.

What differs between platforms is a small ``Surface`` (send, edit, delete one piece; split text
into pieces; the rating buttons; a cursor on drafts) and the ``Pacer``'s settings. At shutdown,
``InFlight`` gives the replies in progress the same grace on every platform.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from bot.types import Draft, Reply, ReplyKind

log = logging.getLogger(__name__)

# A final edit the platform refuses for its rate limit is tried this many times more, each
# after the wait the platform asked for, before the final text goes in a new message instead.
FINAL_RETRIES = 1
# How often a paced call looks again while edits still in flight fill the window.
IN_FLIGHT_POLL_S = 0.05

FAILED = "Sorry, something went wrong on my side while answering. Your message is saved."

P = TypeVar("P")  # one message's worth of text, as the platform renders it
M = TypeVar("M")  # the platform's handle of a sent message
B = TypeVar("B")  # the platform's rating buttons


class MessageGone(Exception):
    """Raised by ``Surface.edit`` when the message no longer exists (the user deleted it)."""


class RateLimited(Exception):
    """Raised by ``Surface.edit`` when the platform refused the edit for its rate limit."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after:.2f} s")
        self.retry_after = retry_after  # seconds the platform asked to wait


class Surface(Protocol[P, M, B]):
    """Where one reply is shown, and what is the platform's own in showing it."""

    @property
    def key(self) -> Hashable:
        """The chat (or channel) the platform paces."""
        ...

    @property
    def private(self) -> bool:
        """A one-to-one chat: private output may be shown here."""
        ...

    @property
    def cursor(self) -> str:
        """Appended to a draft, to say the reply is still being written."""
        ...

    def split(self, text: str) -> list[P]:
        """``text`` as pieces of at most the platform's message length, in order."""
        ...

    def buttons(self, reply: Reply) -> B | None:
        """The 👍/👎 buttons for a final reply (None when it is not rateable)."""
        ...

    async def send(self, piece: P, suffix: str, buttons: B | None, *, first: bool) -> M:
        """Post one piece as a new message (``first``: the reply's first message)."""
        ...

    async def edit(self, message: M, piece: P, suffix: str, buttons: B | None) -> M:
        """Replace a message's text and buttons; raise MessageGone if it was deleted,
        RateLimited if the platform refused it for its rate limit."""
        ...

    async def delete(self, message: M) -> None:
        """Remove a message that the final text no longer needs."""
        ...


class Call(Enum):
    """What a paint does, for the pacer."""

    NEW = "new"  # the reply's first message: nothing of it is on screen yet
    DRAFT = "draft"  # more of a reply still being written
    FINAL = "final"  # the finished reply, or anything else that must land


@dataclass(frozen=True)
class Window:
    """A platform's hard limit on edits in one chat: at most ``limit`` in any ``seconds``."""

    limit: int
    seconds: float


@dataclass
class _Chat:
    next_at: float = float("-inf")  # earliest start of the next paced call
    # When each edit inside the window was answered, sorted. The platform counted the edit
    # before it answered, so a slot counted from here is never freed too early, whatever the
    # round trip was: the margin is each edit's own measured round trip, not a guess.
    edits: list[float] = field(default_factory=list)
    in_flight: int = 0  # edits sent and not answered yet: each holds a slot
    refused_until: float = float("-inf")  # the platform said to wait until then
    streaming: int = 0  # replies shown as drafts here and not final yet


class Pacer:
    """Spaces out the calls that change what a chat shows, per chat.

    Drafts come at most once per ``interval_s`` in a chat, counted from the end of the last
    call, so two replies streaming in one chat share its budget and a slow request cannot bunch
    two edits together on the platform's side. Without a ``window`` (Telegram, which publishes
    no exact limit) the interval is the hard limit, and every call waits its turn. With one
    (Discord: 5 edits per 5 s per channel) the window bounds the edits: a reply's first message
    and its final text go as soon as the window allows, and drafts leave a slot free for each
    reply still streaming in the chat, so a final finds one at once.
    """

    def __init__(
        self,
        interval_s: float,
        *,
        window: Window | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval_s
        self._window = window
        self._clock = clock
        self._chats: dict[Hashable, _Chat] = {}

    def delay(self, key: Hashable, call: Call) -> float:
        """Seconds until ``call`` may start in the chat (0: now)."""
        chat, now = self._chat(key), self._clock()
        paced = max(0.0, chat.next_at - now)
        if self._window is None:
            return paced
        if call is not Call.DRAFT:
            return 0.0
        reserved = min(chat.streaming, self._window.limit - 1)
        return max(paced, self._window_wait(chat, now, reserved + 1))

    @contextlib.asynccontextmanager
    async def turn(self, key: Hashable, call: Call = Call.FINAL) -> AsyncIterator[None]:
        """Wait until ``call`` may start in the chat, then run the block (the call)."""
        await self._sleep_while(lambda: self.delay(key, call))
        chat = self._chat(key)
        paced = self._window is None or call is not Call.FINAL
        if paced:  # booked now, so a concurrent caller waits for this call to end
            chat.next_at = self._clock() + self._interval
        try:
            yield
        finally:
            if paced:
                chat.next_at = max(chat.next_at, self._clock() + self._interval)

    @contextlib.asynccontextmanager
    async def edit(self, key: Hashable, *, wait: bool) -> AsyncIterator[None]:
        """Count the edit the block makes in the chat's window (if the platform has one), from
        when it is answered. A final's edit (``wait``) first waits for a free slot; a draft's
        was checked by ``delay``."""
        if self._window is None:
            yield
            return
        chat = self._chat(key)
        if wait:
            await self._sleep_while(lambda: self._window_wait(chat, self._clock(), 1))
        chat.in_flight += 1
        try:
            yield
        finally:
            chat.in_flight -= 1
            bisect.insort(chat.edits, self._clock())

    def refused(self, key: Hashable, retry_after: float) -> None:
        """The platform refused an edit in the chat: no edit there for ``retry_after`` s."""
        chat = self._chat(key)
        chat.refused_until = max(chat.refused_until, self._clock() + retry_after)

    def streaming(self, key: Hashable, change: int) -> None:
        """A reply in the chat starts (+1) or stops (-1) being shown as drafts."""
        self._chat(key).streaming += change

    @staticmethod
    async def _sleep_while(wait: Callable[[], float]) -> None:
        """Sleep until ``wait()`` says 0; it is asked again after each sleep, since other
        replies in the chat may have taken the slot meanwhile."""
        while True:
            seconds = wait()
            if seconds <= 0:
                return
            await asyncio.sleep(seconds)

    def _window_wait(self, chat: _Chat, now: float, needed: int) -> float:
        """Seconds until ``needed`` slots of the window are free (and the platform's own
        wait, after a refusal, is over)."""
        assert self._window is not None
        edits, seconds = chat.edits, self._window.seconds
        del edits[: bisect.bisect_right(edits, now - seconds)]
        refused = max(0.0, chat.refused_until - now)
        over = len(edits) + chat.in_flight - (self._window.limit - needed)
        if over <= 0:
            return refused
        if over > len(edits):  # only an answer to an edit in flight frees a slot
            return max(refused, IN_FLIGHT_POLL_S)
        return max(refused, edits[over - 1] + seconds - now)

    def _chat(self, key: Hashable) -> _Chat:
        found = self._chats.get(key)
        if found is None:
            if len(self._chats) > 4096:  # forget chats that have been quiet for a while
                self._forget_quiet()
            found = self._chats[key] = _Chat()
        return found

    def _forget_quiet(self) -> None:
        now = self._clock()
        horizon = self._window.seconds if self._window else 0.0
        self._chats = {
            key: chat
            for key, chat in self._chats.items()
            if chat.next_at > now
            or chat.streaming
            or chat.in_flight
            or chat.refused_until > now
            or (chat.edits and now - chat.edits[-1] < horizon)
        }


class ReplyStream(Generic[P, M, B]):
    """Shows one reply on ``surface``.

    A final reply marked private (admin output) that arrives before anything was shown, in a
    chat that is not private, is not painted here: it is ``held`` for the adapter to deliver
    privately.
    """

    def __init__(self, surface: Surface[P, M, B], pacer: Pacer, *, reuse: Sequence[M] = ()) -> None:
        self._surface = surface
        self._pacer = pacer
        # One per piece on screen; ``reuse``: messages already there (🔄 writes over a reply).
        self.messages: list[M] = list(reuse)
        # (piece, suffix, has buttons) of each; None: unknown (a reused message), always edited
        self._shown: list[tuple[P, str, bool] | None] = [None] * len(self.messages)
        self._latest = ""
        self._final: Reply | None = None
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()  # the final reply is known
        self._streaming = False
        self.visible = asyncio.Event()  # set once the first message is on screen
        self.held: Reply | None = None
        self.final_message: M | None = None  # the message carrying the final's last piece

    async def show(self, items: AsyncIterator[Draft | Reply]) -> Reply:
        """Read the reply stream to its end while painting it; returns the final Reply."""
        painter = asyncio.create_task(self._paint())
        try:
            await self._read(items)
        except BaseException:  # cancelled (shutdown): stop painting too
            painter.cancel()
            self._stop_streaming()
            raise
        try:
            await painter
        except Exception as exc:
            # The reply is stored whatever happens here; say why it could not be shown.
            log.warning("could not show a reply in %s: %s", self._surface.key, _describe(exc))
        finally:
            self._stop_streaming()
        assert self._final is not None
        return self._final

    async def finish(self, reply: Reply) -> M | None:
        """Show ``reply`` as the final text, over whatever drafts are on screen; returns the
        message that carries its last piece, or None if the platform refused it (logged)."""
        call = Call.FINAL if self.messages else Call.NEW
        try:
            async with self._pacer.turn(self._surface.key, call):
                await self._render(reply.text, self._surface.buttons(reply), "", final=True)
        except Exception as exc:
            log.warning("could not show a reply in %s: %s", self._surface.key, _describe(exc))
            return None
        finally:
            self._stop_streaming()
        self.final_message = self.messages[-1]
        return self.final_message

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
            log.exception("answering failed in chat %s", self._surface.key)
            self._final = Reply(FAILED, ReplyKind.ERROR)
        finally:
            if close is not None:
                await close()
            if self._final is None:
                self._final = Reply(FAILED, ReplyKind.ERROR)
            self._finished.set()
            self._changed.set()

    async def _paint(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            final = self._final
            if final is not None:
                if final.private and not self.messages and not self._surface.private:
                    self.held = final
                else:
                    await self.finish(final)
                return
            if self._latest.strip():
                await self._draft()

    async def _draft(self) -> None:
        """Show the latest text with the cursor, at the chat's pace; a failed draft is only
        logged (the final text replaces it)."""
        call = Call.DRAFT if self.messages else Call.NEW
        if not await self._draft_due(call):
            return  # the final arrived meanwhile: it is painted next
        try:
            async with self._pacer.turn(self._surface.key, call):
                await self._render(self._latest, None, self._surface.cursor, final=False)
        except Exception as exc:
            log.warning("could not show a draft in %s: %s", self._surface.key, _describe(exc))
        if self.messages and not self._streaming:
            self._streaming = True
            self._pacer.streaming(self._surface.key, +1)

    async def _draft_due(self, call: Call) -> bool:
        """Wait for the pacer's slot for a draft; False if the final arrives first."""
        while (wait := self._pacer.delay(self._surface.key, call)) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), wait)
            if self._finished.is_set():
                return False
        return not self._finished.is_set()

    async def _render(self, text: str, buttons: B | None, suffix: str, *, final: bool) -> None:
        pieces = self._surface.split(text.strip() or "…")
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            if i == last:
                await self._put(i, piece, suffix, buttons, final)
            else:
                await self._put(i, piece, "", None, final)
        for message in self.messages[len(pieces) :]:
            # Only an error replacing a long draft is shorter than what is on screen.
            with contextlib.suppress(Exception):
                await self._surface.delete(message)
        del self.messages[len(pieces) :], self._shown[len(pieces) :]

    async def _put(self, i: int, piece: P, suffix: str, buttons: B | None, final: bool) -> None:
        state = (piece, suffix, buttons is not None)
        surface = self._surface
        if i < len(self.messages):
            if self._shown[i] == state:
                return
            self.messages[i] = await self._edit(self.messages[i], piece, suffix, buttons, final)
            self._shown[i] = state
        else:
            message = await surface.send(piece, suffix, buttons, first=not self.messages)
            self.messages.append(message)
            self._shown.append(state)
        self.visible.set()

    async def _edit(self, message: M, piece: P, suffix: str, buttons: B | None, final: bool) -> M:
        """Edit ``message`` in the chat's window. A draft the platform refuses for its rate limit
        is skipped (raised: the next draft or the final replaces it); a final is tried again
        after the wait the platform asks for, and if it is still refused it goes in a new
        message, so the final text is never lost. A message the user deleted is replaced."""
        key = self._surface.key
        for _ in range(1 + FINAL_RETRIES if final else 1):
            try:
                async with self._pacer.edit(key, wait=final):
                    return await self._surface.edit(message, piece, suffix, buttons)
            except MessageGone:
                # The user deleted the draft: go on in a new message rather than stop.
                return await self._surface.send(piece, suffix, buttons, first=False)
            except RateLimited as exc:
                self._pacer.refused(key, exc.retry_after)
                if not final:
                    raise
                log.info("an edit in %s was refused: %s", key, exc)
        replaced = await self._surface.send(piece, suffix, buttons, first=False)
        with contextlib.suppress(Exception):  # the draft it replaces is stale; not essential
            await self._surface.delete(message)
        return replaced

    def _stop_streaming(self) -> None:
        """The reply is final (or abandoned): release its reserved edit slot."""
        if self._streaming:
            self._streaming = False
            self._pacer.streaming(self._surface.key, -1)


async def unless_refused(
    items: AsyncIterator[Draft | Reply],
) -> tuple[Reply | None, AsyncIterator[Draft | Reply]]:
    """Wait for the first item of a 🔄 reply: a final Reply that is not an answer (a refusal,
    a notice) is returned alone, to show apart from the reply it would otherwise write over;
    else (None, the whole stream)."""
    first = await anext(aiter(items), None)
    if first is None or (isinstance(first, Reply) and not first.rateable):
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()
        return first or Reply(FAILED, ReplyKind.ERROR), _nothing()
    return None, _chain(first, items)


async def _chain(
    first: Draft | Reply, rest: AsyncIterator[Draft | Reply]
) -> AsyncIterator[Draft | Reply]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()


async def _nothing() -> AsyncIterator[Draft | Reply]:
    return
    yield  # an async generator that yields nothing


class InFlight:
    """The replies an adapter is showing. At shutdown each gets ``grace_s`` to finish; the rest
    are cut off (every one is stored, and a cancelled one is marked so)."""

    def __init__(self, grace_s: float) -> None:
        self._grace_s = grace_s
        self._tasks: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the current task as a reply in progress while the block runs."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def drain(self) -> None:
        """Let the replies in progress finish (up to the grace), then cancel the rest."""
        current = asyncio.current_task()
        pending = {task for task in self._tasks if not task.done() and task is not current}
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=self._grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
