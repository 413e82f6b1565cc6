"""Signals besides the buttons, through the ChatService: 🔄 another reply, reactions as votes,
/better corrections; each lands as training data (ratings and preference pairs)."""

from __future__ import annotations

from dataclasses import replace

from bot.app import Core
from bot.chat import signals
from bot.generation import ScriptedGenerator
from bot.types import Draft, Incoming, RateAction, Reply, ReplyKind, Turn, Vote
from tests.support.records import Script

BOB = Incoming("telegram", "7", "7", "Bob", "")
ANN = Incoming("telegram", "7", "8", "Ann", "")
CHAT = BOB.chat_key


async def ask(core: Core, text: str, who: Incoming = BOB) -> Reply:
    items = [item async for item in core.service.respond(replace(who, text=text))]
    assert isinstance(items[-1], Reply)
    return items[-1]


async def again(core: Core, exchange_id: int, who: Incoming = BOB) -> list[Draft | Reply]:
    stream = core.service.regenerate(
        exchange_id, who.user_key, chat_key=who.chat_key, platform=who.platform
    )
    return [item async for item in stream]


async def answered(core: Core, script: Script, text: str = "Lyon") -> int:
    """Bob asks; the reply (``text``) is shown as Telegram message 55; its exchange id."""
    script.text = text
    reply = await ask(core, "Capital of France?")
    assert reply.exchange_id is not None
    await core.service.reply_shown(reply.exchange_id, "55")
    return reply.exchange_id


async def test_another_reply_is_sampled_streamed_stored_and_takes_the_old_ones_place(
    core: Core, script: Script, scripted: ScriptedGenerator
) -> None:
    first = await answered(core, script)
    script.text = "Paris is the capital"
    *drafts, final = await again(core, first)
    assert drafts and all(isinstance(d, Draft) for d in drafts)
    assert isinstance(final, Reply) and final.rateable and final.text == "Paris is the capital"
    assert final.exchange_id is not None and final.exchange_id != first
    prompt, params = scripted.requests[-1]
    assert prompt == scripted.requests[-2][0]  # the exact same prompt
    wanted = max(
        core.settings.generation.temperature, core.settings.chat.regenerate_min_temperature
    )
    assert params.temperature == wanted
    # The chat shows (and the next prompt holds) only the new reply, in the old one's message.
    history = await core.repo.history(CHAT, 10)
    assert [m.content for m in history] == ["Capital of France?", "Paris is the capital"]
    assert await core.repo.signals.exchange_for_message(CHAT, "55") == final.exchange_id
    assert await core.repo.last_exchange_id(CHAT) == final.exchange_id


async def test_a_vote_after_another_reply_makes_a_preference_pair(
    core: Core, script: Script
) -> None:
    first = await answered(core, script)
    script.text = "Paris"
    final = (await again(core, first))[-1]
    assert isinstance(final, Reply) and final.exchange_id is not None
    await core.service.rate(final.exchange_id, BOB.user_key, Vote.UP, chat_key=CHAT)
    [pair] = await core.repo.training.pairs()
    assert (pair.chosen.completion, pair.rejected.completion) == ("Paris", "Lyon")
    assert pair.user_key == BOB.user_key
    assert pair.prompt == (
        Turn("system", core.settings.chat.system_prompt),
        Turn("user", "Capital of France?"),
    )
    # 👎 on the first instead: still the same pair (the other was not disliked too).
    await core.service.rate(final.exchange_id, BOB.user_key, Vote.UP, chat_key=CHAT)  # retract
    await core.service.rate(first, BOB.user_key, Vote.DOWN, chat_key=CHAT)
    [pair] = await core.repo.training.pairs()
    assert (pair.chosen.exchange_id, pair.rejected.exchange_id) == (final.exchange_id, first)
    counts = await core.repo.signals.counts()
    assert counts.regenerations == 1 and counts.corrections == 0


async def test_another_reply_is_refused_for_another_chat_or_an_unknown_reply(
    core: Core, script: Script, scripted: ScriptedGenerator
) -> None:
    first = await answered(core, script)
    asked = len(scripted.requests)
    other = replace(BOB, chat_id="999")
    for items in (await again(core, first, other), await again(core, 424242)):
        [refusal] = items
        assert isinstance(refusal, Reply) and refusal.kind is ReplyKind.NOTICE
        assert not refusal.rateable
    assert len(scripted.requests) == asked


async def test_reactions_vote_replace_and_withdraw(core: Core, script: Script) -> None:
    exchange = await answered(core, script)
    react = core.service.react
    outcome = await react(CHAT, "55", ANN.user_key, added=["❤️"])
    assert outcome is not None and outcome.action is RateAction.STORED
    assert await core.repo.user_vote(exchange, ANN.user_key) is Vote.UP
    outcome = await react(CHAT, "55", ANN.user_key, added=["💩"])  # replaces the earlier vote
    assert outcome is not None and outcome.action is RateAction.CHANGED
    assert await core.repo.user_vote(exchange, ANN.user_key) is Vote.DOWN
    assert await react(CHAT, "55", ANN.user_key, removed=["👍"]) is None  # not the vote now
    assert await react(CHAT, "55", ANN.user_key, added=["🤔"]) is None  # counts for nothing
    assert await react(CHAT, "56", ANN.user_key, added=["👍"]) is None  # not a reply of mine
    outcome = await react(CHAT, "55", ANN.user_key, removed=["💩"])
    assert outcome is not None and outcome.action is RateAction.RETRACTED
    assert await core.repo.user_vote(exchange, ANN.user_key) is None
    await react(CHAT, "55", ANN.user_key, added=["🔥"])
    [rated] = await core.repo.training.rated()
    assert rated.label and rated.user_key == ANN.user_key
    assert (await core.repo.signals.counts()).votes_by_source == {"reaction": 1}


async def test_better_stores_a_liked_reply_and_a_pair_against_the_original(
    core: Core, script: Script
) -> None:
    exchange = await answered(core, script)
    reply = await ask(
        core, "/better Paris is the capital of France.", replace(ANN, reply_to_id="55")
    )
    assert reply.text == signals.THANKS
    rated = await core.repo.training.rated()
    assert [(r.completion, r.label, r.user_key) for r in rated] == [
        ("Paris is the capital of France.", True, ANN.user_key)
    ]
    [pair] = await core.repo.training.pairs()
    assert pair.chosen.completion == "Paris is the capital of France."
    assert pair.rejected.exchange_id == exchange and pair.user_key == ANN.user_key
    assert await core.repo.last_exchange_id(CHAT) == exchange  # a correction is not my reply
    history = await core.repo.history(CHAT, 10)
    assert "Paris is the capital of France." not in [m.content for m in history]
    counts = await core.repo.signals.counts()
    assert counts.corrections == 1 and counts.votes_by_source == {"correction": 1}


async def test_better_refuses_what_it_cannot_use(core: Core, script: Script) -> None:
    await answered(core, script)
    to_bot = replace(ANN, reply_to_id="55")
    assert (await ask(core, "/better Paris", ANN)).text == signals.NOT_A_REPLY
    assert (
        await ask(core, "/better Paris", replace(ANN, reply_to_id="1"))
    ).text == signals.NOT_A_REPLY
    assert (await ask(core, "/better", to_bot)).text == signals.EMPTY
    too_long = "x" * (core.settings.chat.max_correction_chars + 1)
    assert "the limit is" in (await ask(core, f"/better {too_long}", to_bot)).text
    await core.repo.set_training_opt_out(ANN.user_key, True)
    assert (await ask(core, "/better Paris", to_bot)).text == signals.OPTED_OUT
    assert await core.repo.training.rated() == []
    assert (await core.repo.signals.counts()).corrections == 0


async def test_forget_and_opt_out_take_the_pairs_away(core: Core, script: Script) -> None:
    await answered(core, script)
    await ask(core, "/better Paris", replace(ANN, reply_to_id="55"))
    assert len(await core.repo.training.pairs()) == 1
    await core.repo.set_training_opt_out(BOB.user_key, True)  # the prompt's author
    assert await core.repo.training.pairs() == []
    await core.repo.set_training_opt_out(BOB.user_key, False)
    assert len(await core.repo.training.pairs()) == 1
    report = await core.repo.forget_user(ANN.user_key)  # the correction's writer
    assert report.exchanges == 1 and report.ratings == 1
    assert await core.repo.training.pairs() == [] and await core.repo.training.rated() == []


async def test_stats_counts_the_signals(core: Core, script: Script) -> None:
    first = await answered(core, script)
    await core.service.react(CHAT, "55", ANN.user_key, added=["👍"])
    await core.service.rate(first, BOB.user_key, Vote.DOWN, chat_key=CHAT)
    script.text = "Paris"
    await again(core, first)
    await ask(core, "/better Paris!", replace(ANN, reply_to_id="55"))
    me = Incoming("console", "local", "local", "Me", "/stats")
    reply = await ask(core, "/stats", me)
    assert "votes by reactions: 1" in reply.text
    assert "votes by buttons and /good, /bad: 1" in reply.text
    assert "🔄 regenerated replies: 1" in reply.text
    assert "/better corrections: 1" in reply.text
    assert "preference pairs (usable for training): " in reply.text
