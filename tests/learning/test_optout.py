"""/optout in group chats: an opted-out member's words (and the bot's replies to them) are in
no training row, not even quoted in another member's prompt; /optin brings them back."""

from __future__ import annotations

import json
from dataclasses import replace

from bot.app import Core
from bot.types import Incoming, Vote
from storage.forget import FORGOTTEN
from tests.support.records import say

ANN = Incoming("telegram", "1", "1", "Ann", "")
BOB = Incoming("telegram", "2", "2", "Bob", "")


def _in_group(who: Incoming) -> Incoming:
    return replace(who, chat_id="-100", is_private=False, mentions_bot=True)


async def test_an_opted_out_members_group_words_are_in_no_training_row(core: Core) -> None:
    opted = await say(core, BOB, "/optout")
    assert "nothing you write or rate is used for training" in opted.text
    bob = await say(core, _in_group(BOB), "Bob secret plan")
    unrated = await say(core, _in_group(ANN), "Ann asks without rating")
    ann = await say(core, _in_group(ANN), "and Ann answers")
    assert ann.exchange_id is not None and unrated.exchange_id is not None
    await core.service.rate(ann.exchange_id, ANN.user_key, Vote.UP)

    rated = await core.repo.training.rated()
    assert [r.exchange_id for r in rated] == [ann.exchange_id]  # Ann's row stays
    contents = [t.content for t in rated[0].prompt]
    assert "Ann: and Ann answers" in contents and FORGOTTEN in contents
    others = await core.repo.training.unrated(limit=10)
    assert unrated.exchange_id in {e.id for e in others}
    prompts = [r.prompt for r in rated] + [e.prompt for e in others]
    text = json.dumps([[t.content for t in p] for p in prompts], ensure_ascii=False)
    assert "Bob secret plan" not in text
    assert bob.text not in text  # the bot's reply to Bob quotes him

    await say(core, BOB, "/optin")
    back = await core.repo.training.rated()
    assert "Bob: Bob secret plan" in [t.content for t in back[0].prompt]
