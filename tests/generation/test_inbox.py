"""bot/generation/inbox.py: what an engine thread receives (both local engines use it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.errors import GenerationError
from bot.generation.channel import Item
from bot.generation.inbox import Inbox, Swap


@dataclass
class FakeRequest:
    slot: str = "default"
    items: list[Item] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def sink(self, item: Item) -> None:
        self.items.append(item)

    def cancel(self) -> None:
        self.cancelled.set()


def swaps(inbox: Inbox[FakeRequest, str, str]) -> list[Swap[str]]:
    seen: list[Swap[str]] = []
    assert inbox.receive(seen.append, block=False)
    return seen


def test_a_request_is_bound_to_what_its_slot_serves_when_submitted() -> None:
    inbox: Inbox[FakeRequest, str, str] = Inbox()
    before = FakeRequest()
    inbox.submit(before)
    inbox.serve("default", "a1", Path("/adapters/v1"))
    after, other = FakeRequest(), FakeRequest(slot="candidate")
    inbox.submit(after)
    inbox.submit(other)
    assert swaps(inbox) == []
    assert [(q.request, q.adapter) for q in inbox.pending] == [
        (before, None),
        (after, "a1"),
        (other, None),  # an empty slot is the base model
    ]
    assert inbox.source("default") == Path("/adapters/v1")
    assert inbox.source("candidate") is None


def test_queued_requests_pin_their_adapter_until_taken() -> None:
    inbox: Inbox[FakeRequest, str, str] = Inbox()
    inbox.serve("default", "a1", None)
    inbox.submit(FakeRequest())
    inbox.serve("default", "a2", None)  # a swap: the queued request keeps a1
    swaps(inbox)
    assert inbox.pinned() == {"a1", "a2"}
    assert inbox.take().adapter == "a1"
    assert inbox.pinned() == {"a2"}
    inbox.serve("candidate", "b1", None)
    assert inbox.pinned() == {"a2", "b1"}
    inbox.empty("candidate")
    assert inbox.pinned() == {"a2"}
    assert inbox.resolve("candidate") is None


def test_swaps_run_on_receive_in_order_with_requests() -> None:
    inbox: Inbox[FakeRequest, str, str] = Inbox()
    first = FakeRequest()
    inbox.submit(first)
    future = inbox.swap("default", "weights", Path("/v2"))
    seen = swaps(inbox)
    assert [(s.slot, s.payload, s.source) for s in seen] == [("default", "weights", Path("/v2"))]
    assert seen[0].future is future
    assert [q.request for q in inbox.pending] == [first]


def test_after_the_stop_nothing_is_queued_and_close_fails_the_rest() -> None:
    inbox: Inbox[FakeRequest, str, str] = Inbox()
    queued = FakeRequest()
    inbox.submit(queued)
    waiting_swap = inbox.swap("default", "w", None)
    inbox.stop()
    late = FakeRequest()
    inbox.submit(late)
    assert isinstance(late.items[-1], GenerationError)  # answered, not lost
    with pytest.raises(GenerationError):
        inbox.swap("default", "w", None).result(timeout=0)
    error = GenerationError("the model is shutting down")
    assert inbox.close(error) == [queued]  # never started: the engine answers it
    with pytest.raises(GenerationError):
        waiting_swap.result(timeout=0)
    assert not inbox.pending
    assert inbox.pinned() == {None}  # the default slot's base model: nothing queued holds more


def test_receive_says_when_the_stop_was_asked_for() -> None:
    inbox: Inbox[FakeRequest, str, str] = Inbox()
    request = FakeRequest()
    inbox.submit(request)
    inbox.stop()
    assert inbox.receive(lambda _: None, block=True) is False
    assert [q.request for q in inbox.pending] == [request]
