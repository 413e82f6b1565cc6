"""The shared reply-streaming driver over a fake platform: pacing, splitting, the final text with
buttons, private output held back, a deleted draft, failures, and the drain at shutdown."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from adapters.base import split_text
from adapters.streaming import (
    FAILED,
    Call,
    InFlight,
    MessageGone,
    Pacer,
    RateLimited,
    ReplyStream,
    Window,
)
from bot.types import Draft, Reply, ReplyKind

LIMIT = 40  # characters of one fake message


@dataclass
class Shown:
    """One call the fake platform received."""

    op: str  # send, edit, delete
    message: int
    text: str
    buttons: str | None
    at: float


@dataclass
class FakeSurface:
    """A platform whose messages hold ``LIMIT`` characters and whose buttons are a string."""

    key: int = 1
    private: bool = True
    limit: int = LIMIT
    cursor: str = " ▌"
    calls: list[Shown] = field(default_factory=list)
    screen: dict[int, str] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)  # deleted by the user
    fail_sends: int = 0  # the next n sends are refused
    refuse_edits: int = 0  # the next n edits are refused for the rate limit
    retry_after: float = 0.05  # what a refusal asks to wait
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def split(self, text: str) -> list[str]:
        return split_text(text, self.limit)

    def buttons(self, reply: Reply) -> str | None:
        return f"rate:{reply.exchange_id}" if reply.rateable and reply.exchange_id else None

    async def send(self, piece: str, suffix: str, buttons: str | None, *, first: bool) -> int:
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("the platform is down")
        message = next(self._ids)
        self._record("send", message, piece + suffix, buttons)
        return message

    async def edit(self, message: int, piece: str, suffix: str, buttons: str | None) -> int:
        if message in self.gone:
            raise MessageGone
        if self.refuse_edits:
            self.refuse_edits -= 1
            self.calls.append(Shown("refused", message, piece + suffix, buttons, time.monotonic()))
            raise RateLimited(self.retry_after)
        self._record("edit", message, piece + suffix, buttons)
        return message

    async def delete(self, message: int) -> None:
        self.calls.append(Shown("delete", message, "", None, time.monotonic()))
        self.screen.pop(message, None)

    def _record(self, op: str, message: int, text: str, buttons: str | None) -> None:
        self.calls.append(Shown(op, message, text, buttons, time.monotonic()))
        self.screen[message] = text

    def ops(self) -> list[str]:
        return [call.op for call in self.calls]


async def written(
    texts: Sequence[str], final: Reply, delay_s: float = 0.0
) -> AsyncIterator[Draft | Reply]:
    """The core's stream: a draft per text, then the final reply, ``delay_s`` apart."""
    for text in texts:
        await asyncio.sleep(delay_s)
        yield Draft(text)
    await asyncio.sleep(delay_s)
    yield final


def answer(text: str, exchange_id: int | None = 7) -> Reply:
    return Reply(text, ReplyKind.ANSWER, exchange_id=exchange_id)


def growing(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[: n + 1]) for n in range(len(words))]


async def spend(pacer: Pacer, key: int | str, *, wait: bool) -> None:
    """One edit in the chat's window, answered at once."""
    async with pacer.edit(key, wait=wait):
        pass


def stream(surface: FakeSurface, pacer: Pacer | None = None) -> ReplyStream[str, int, str]:
    return ReplyStream(surface, pacer or Pacer(0.0))


async def test_drafts_then_the_final_text_with_buttons_in_one_message() -> None:
    surface = FakeSurface()
    shown = stream(surface)
    reply = await shown.show(written(growing("one two three"), answer("one two three")))
    assert reply.text == "one two three"
    assert surface.ops()[0] == "send" and set(surface.ops()[1:]) == {"edit"}
    assert surface.calls[0].text.endswith(" ▌")  # a draft says it is still being written
    assert [c.text for c in surface.calls][-1] == "one two three"
    assert surface.calls[-1].buttons == "rate:7" and shown.final_message == 100
    assert shown.visible.is_set() and shown.held is None


async def test_edits_are_paced_per_chat_from_the_end_of_each_call() -> None:
    surface = FakeSurface(limit=1000)
    text = " ".join(f"w{i}" for i in range(30))
    words = growing(text)
    await stream(surface, Pacer(0.1)).show(written(words, answer(text[:15]), delay_s=0.01))
    gaps = [b.at - a.at for a, b in itertools.pairwise(surface.calls)]
    assert 2 <= len(surface.calls) <= 6  # 0.3 s of writing: a few edits, not thirty
    assert min(gaps) >= 0.09


async def test_two_replies_in_one_chat_share_its_pace() -> None:
    surface = FakeSurface()
    pacer = Pacer(0.1)
    texts = growing("a b c d e f g h")
    await asyncio.gather(
        stream(surface, pacer).show(written(texts, answer("a b"), delay_s=0.02)),
        stream(surface, pacer).show(written(texts, answer("c d"), delay_s=0.02)),
    )
    gaps = [b.at - a.at for a, b in itertools.pairwise(surface.calls)]
    assert min(gaps) >= 0.09


async def test_long_text_is_split_and_the_buttons_go_on_the_last_piece() -> None:
    surface = FakeSurface()
    text = "First sentence is here. The second one is now. And a third one to end."
    shown = stream(surface)
    await shown.show(written([text[:30], text], answer(text), delay_s=0.01))
    pieces = [surface.screen[m] for m in shown.messages]
    assert pieces == split_text(text, LIMIT) and len(pieces) == 3
    assert all(len(piece) <= LIMIT for piece in pieces)
    finals = {c.message: c.buttons for c in surface.calls}
    assert [finals[m] for m in shown.messages] == [None, None, "rate:7"]
    assert shown.final_message == shown.messages[-1]


async def test_a_final_shorter_than_the_drafts_removes_the_extra_messages() -> None:
    surface = FakeSurface()
    shown = stream(surface)
    long_draft = "word " * 20
    await shown.show(written([long_draft], Reply("Oops, short.", ReplyKind.ERROR), 0.01))
    assert "delete" in surface.ops() and len(shown.messages) == 1
    assert surface.screen == {shown.messages[0]: "Oops, short."}
    assert surface.calls[-2].buttons is None  # an error is not rateable


async def test_a_draft_deleted_by_the_user_goes_on_in_a_new_message() -> None:
    surface = FakeSurface()
    shown = stream(surface)

    async def items() -> AsyncIterator[Draft | Reply]:
        yield Draft("first words")
        await asyncio.sleep(0.02)
        surface.gone.add(100)
        yield answer("first words and more")

    await shown.show(items())
    assert shown.messages == [101] and surface.screen[101] == "first words and more"


async def test_private_output_in_a_group_is_held_for_the_adapter() -> None:
    surface = FakeSurface(private=False)
    shown = stream(surface)
    secret = Reply("Model: scripted", ReplyKind.NOTICE, private=True)
    reply = await shown.show(written([], secret))
    assert shown.held is reply and surface.calls == []
    note = await shown.finish(Reply("Sent to you privately.", ReplyKind.NOTICE))
    assert note is not None and surface.screen == {note: "Sent to you privately."}


async def test_a_failing_core_gets_an_error_reply_and_its_stream_is_closed() -> None:
    surface = FakeSurface()
    closed = asyncio.Event()

    async def broken() -> AsyncIterator[Draft | Reply]:
        try:
            yield Draft("half an")
            raise RuntimeError("the model fell over")
        finally:
            closed.set()

    reply = await stream(surface).show(broken())
    assert (reply.text, reply.kind) == (FAILED, ReplyKind.ERROR)
    assert closed.is_set() and " ".join(surface.screen.values()) == FAILED


async def test_a_refused_draft_is_skipped_and_the_final_still_shown() -> None:
    surface = FakeSurface(fail_sends=1)
    shown = stream(surface)
    await shown.show(written(["hello"], answer("hello there"), delay_s=0.01))
    assert list(surface.screen.values()) == ["hello there"]
    assert shown.final_message is not None


async def test_a_refused_final_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    surface = FakeSurface(fail_sends=5)
    shown = stream(surface)
    reply = await shown.show(written([], answer("never seen")))
    assert reply.text == "never seen" and shown.final_message is None
    assert "could not show a reply" in caplog.text


def test_pacer_without_a_window_spaces_every_call() -> None:
    now = [0.0]
    pacer = Pacer(1.0, clock=lambda: now[0])
    for call in Call:
        assert pacer.delay("chat", call) == 0

    async def one_call() -> None:
        async with pacer.turn("chat", Call.DRAFT):
            now[0] += 0.5  # the call itself takes half a second

    asyncio.run(one_call())
    now[0] = 1.0
    for call in Call:  # counted from the end of the call, for finals too
        assert pacer.delay("chat", call) == pytest.approx(0.5)
    assert pacer.delay("another chat", Call.DRAFT) == 0
    now[0] = 1.5
    assert pacer.delay("chat", Call.FINAL) == 0


async def test_pacer_with_a_window_lets_firsts_and_finals_through() -> None:
    now = [0.0]
    pacer = Pacer(1.0, window=Window(2, 5.0), clock=lambda: now[0])
    async with pacer.turn("chat", Call.NEW):
        pass  # a first message paces the drafts after it, but nothing waits for it
    assert pacer.delay("chat", Call.NEW) == 0 and pacer.delay("chat", Call.FINAL) == 0
    assert pacer.delay("chat", Call.DRAFT) == pytest.approx(1.0)
    now[0] = 1.0
    for _ in range(2):
        async with pacer.edit("chat", wait=False):
            pass
    # the window (2 edits in 5 s) is full
    assert pacer.delay("chat", Call.DRAFT) == pytest.approx(5.0)
    waiting = asyncio.create_task(spend(pacer, "chat", wait=True))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # a final's edit waits for the window, however long
    waiting.cancel()


async def test_drain_lets_quick_replies_finish_and_cuts_off_slow_ones() -> None:
    inflight = InFlight(grace_s=0.1)
    finished: list[str] = []

    async def reply(name: str, seconds: float) -> None:
        with inflight.track():
            await asyncio.sleep(seconds)
            finished.append(name)

    quick = asyncio.create_task(reply("quick", 0.02))
    slow = asyncio.create_task(reply("slow", 5.0))
    await asyncio.sleep(0)
    began = time.monotonic()
    await inflight.drain()
    assert time.monotonic() - began < 1.0
    assert finished == ["quick"] and quick.done() and slow.cancelled()
    await inflight.drain()  # nothing left: returns at once


async def test_a_final_does_not_wait_behind_a_paced_draft() -> None:
    surface = FakeSurface()
    pacer = Pacer(5.0, window=Window(5, 5.0))  # a draft waits 5 s; the final need not
    began = time.monotonic()
    await stream(surface, pacer).show(written(["a", "a b"], answer("a b c"), delay_s=0.05))
    assert time.monotonic() - began < 1.0
    assert (surface.calls[-1].text, surface.calls[-1].buttons) == ("a b c", "rate:7")


async def test_a_refused_final_edit_is_tried_again_after_the_wait_asked_for() -> None:
    surface = FakeSurface()
    shown = stream(surface, Pacer(0.0, window=Window(5, 5.0)))
    stream_of_text = written(["hello"], answer("hello there"), delay_s=0.01)

    async def refuse_the_final() -> None:
        await shown.visible.wait()
        surface.refuse_edits = 1

    refusing = asyncio.create_task(refuse_the_final())
    await shown.show(stream_of_text)
    await refusing
    assert surface.ops() == ["send", "refused", "edit"]
    refused, edited = surface.calls[1:]
    assert edited.at - refused.at >= surface.retry_after  # it waited as asked
    assert list(surface.screen.values()) == ["hello there"]


async def test_a_final_that_cannot_be_edited_goes_in_a_new_message() -> None:
    surface = FakeSurface()
    shown = stream(surface, Pacer(0.0, window=Window(5, 5.0)))
    surface.refuse_edits = 100  # every edit is refused: the draft stays as it was
    await shown.show(written(["hello", "hello there"], answer("hello there, you"), delay_s=0.01))
    assert surface.ops().count("refused") >= 2 and "edit" not in surface.ops()
    assert surface.ops()[-2:] == ["send", "delete"]  # the final first, then the stale draft
    assert list(surface.screen.values()) == ["hello there, you"]
    assert shown.final_message == surface.calls[-2].message and surface.calls[-2].buttons


async def test_a_refusal_holds_back_drafts_for_the_wait_asked_for() -> None:
    now = [0.0]
    pacer = Pacer(0.0, window=Window(5, 5.0), clock=lambda: now[0])
    pacer.refused("chat", 2.0)  # the platform asked for 2 s of quiet
    assert pacer.delay("chat", Call.DRAFT) == pytest.approx(2.0)
    assert pacer.delay("chat", Call.NEW) == 0  # a new message is not an edit
    now[0] = 2.0
    assert pacer.delay("chat", Call.DRAFT) == 0


async def test_an_edit_holds_its_slot_until_answered_and_counts_from_the_answer() -> None:
    now = [0.0]
    pacer = Pacer(0.0, window=Window(1, 5.0), clock=lambda: now[0])
    async with pacer.edit("chat", wait=False):
        now[0] = 7.0  # a slow round trip: still in flight long after the window
        assert pacer.delay("chat", Call.DRAFT) > 0
    now[0] = 11.9  # the platform counted it at most when it answered, at 7.0
    assert pacer.delay("chat", Call.DRAFT) == pytest.approx(0.1)
    now[0] = 12.0
    assert pacer.delay("chat", Call.DRAFT) == 0
