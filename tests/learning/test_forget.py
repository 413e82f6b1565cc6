"""/forget and /optout: a user's rows are in no future training set.

Users chat and rate through the ChatService (private chats and a group), a run trains on it
all, then one user forgets and one opts out; every later training set is checked row by row:
no rating, no exchange and no words of theirs, not even quoted in a group member's prompt.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from bot.app import Core
from bot.outbox import Notify
from bot.settings import Settings
from bot.types import Incoming, Reply, Vote
from tests.support.records import rated
from tests.support.trainers import FakeTrainer, trainer_core

ANN = Incoming("telegram", "1", "1", "Ann", "")
BOB = Incoming("telegram", "2", "2", "Bob", "")
CID = Incoming("telegram", "3", "3", "Cid", "")


def _training_text(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False)


def _in_group(who: Incoming) -> Incoming:
    return replace(who, chat_id="-100", is_private=False, mentions_bot=True)


async def _assert_a_run_without_bob_and_cid(
    core: Core, trainer: FakeTrainer, notify: Notify, ids: dict[str, int]
) -> None:
    # A run after /forget (Bob) and /optout (Cid): only Ann's own rows, none quoting Bob.
    await rated(core, ANN, "Ann again", Vote.UP)
    await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
    rows = trainer.datasets[-1]
    text = _training_text(rows)
    assert "Bob" not in text and "Cid" not in text
    users = {u for r in rows for u in r["users"]}
    assert users == {ANN.user_key}
    trained = {i for r in rows for i in r["exchange_ids"]}
    assert ids["bob"] not in trained and ids["bob_group"] not in trained
    assert ids["ann_group"] not in trained  # it quoted Bob: excluded with him
    assert ids["ann"] in trained and all(r["label"] for r in rows)  # Bob's 👎 on it is gone


async def test_forgotten_and_opted_out_users_are_in_no_future_training_set(
    settings: Settings,
) -> None:
    trainer = FakeTrainer()
    core = await trainer_core(settings, trainer)
    notify = core.outbox.notifier("telegram:1")
    try:
        ann = await rated(core, ANN, "Ann likes the sea", Vote.UP)
        bob = await rated(core, BOB, "Bob secret one", Vote.UP)
        await rated(core, CID, "Cid private thoughts", Vote.DOWN)
        # In a group, Bob speaks first; Ann's exchange then quotes him in its prompt.
        bob_group = await rated(core, _in_group(BOB), "Bob secret two", Vote.UP)
        ann_group = await rated(core, _in_group(ANN), "and Ann answers", Vote.UP)
        await core.service.rate(ann, BOB.user_key, Vote.DOWN)  # Bob rated Ann's reply too
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        first = _training_text(trainer.datasets[-1])
        assert "Bob secret one" in first and "Cid private thoughts" in first

        forgot = [i async for i in core.service.respond(replace(BOB, text="/forget"))]
        assert isinstance(forgot[-1], Reply) and "1 adapter version(s)" in forgot[-1].text
        opted = [i async for i in core.service.respond(replace(CID, text="/optout"))]
        assert isinstance(opted[-1], Reply) and opted[-1].private
        version = await core.repo.adapters.get(1)
        assert version is not None and version.tainted  # it learned from Bob

        ids = {"ann": ann, "bob": bob, "bob_group": bob_group, "ann_group": ann_group}
        for _ in range(2):  # every future run, not just the next one
            await _assert_a_run_without_bob_and_cid(core, trainer, notify, ids)
        exported = await core.repo.training.rated()
        assert {r.user_key for r in exported} == {ANN.user_key}
        scrubbed = await core.repo.history("telegram:-100", 10)
        assert all("Bob secret" not in m.content for m in scrubbed)
    finally:
        await core.aclose()
