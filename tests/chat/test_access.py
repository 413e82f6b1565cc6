"""Access control in the chat: the [access] lists and database blocks, one notice, then
silence; refused raters' presses count for nothing; admins are always answered."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bot.app import Core, build_core
from bot.chat.access import BLOCKED, CHAT_NOT_ALLOWED, NO_PRIVATE, NOT_ALLOWED, Access
from bot.generation import ScriptedGenerator
from bot.settings import AccessSettings, Settings
from bot.types import Draft, Incoming, RateAction, Reply, ReplyKind, Vote
from tests.support.records import say

EVE = Incoming("telegram", "66", "66", "Eve", "")
ANN = Incoming("telegram", "77", "77", "Ann", "")
ADMIN = Incoming("console", "local", "local", "Admin", "")
GROUP = replace(ANN, chat_id="-100", is_private=False, mentions_bot=True)


async def _core(settings: Settings, **access: Any) -> Core:
    configured = settings.model_copy(update={"access": AccessSettings(**access)})
    return await build_core(configured, generator=ScriptedGenerator(), progress=False)


async def _items(core: Core, who: Incoming, text: str) -> list[Draft | Reply]:
    return [item async for item in core.service.respond(replace(who, text=text))]


async def test_a_database_block_gets_one_notice_then_silence(core: Core) -> None:
    answered = await say(core, EVE, "hello")
    assert answered.kind is ReplyKind.ANSWER and answered.exchange_id is not None
    await core.repo.curation.set_user(EVE.user_key, "console:local", blocked=True)

    assert core.service.should_answer(replace(EVE, text="still there?"))
    notice = await say(core, EVE, "still there?")
    assert (notice.kind, notice.text, notice.exchange_id) == (ReplyKind.NOTICE, BLOCKED, None)
    # The next messages: the adapters are told not to answer at all.
    assert not core.service.should_answer(replace(EVE, text="hello?"))
    assert not core.service.should_answer(replace(EVE, text="/help"))
    # Nothing of theirs was stored after the block; other users go on as before.
    history = await core.repo.history(EVE.chat_key, 50)
    assert [m.content for m in history if m.role == "user"] == ["hello"]
    assert (await say(core, ANN, "hi")).kind is ReplyKind.ANSWER

    # Their press on an older reply changes nothing.
    outcome = await core.service.rate(answered.exchange_id, EVE.user_key, Vote.DOWN)
    assert (outcome.action, outcome.message) == (RateAction.REFUSED, BLOCKED)
    assert await core.repo.user_vote(answered.exchange_id, EVE.user_key) is None


async def test_an_unblock_is_seen_at_once_by_the_next_message(core: Core) -> None:
    await core.repo.curation.set_user(EVE.user_key, "console:local", blocked=True)
    assert (await say(core, EVE, "hi")).text == BLOCKED
    assert not core.service.should_answer(replace(EVE, text="hi"))
    core.service.access.remember(EVE.user_key, False)  # what /unblock does beside the database
    await core.repo.curation.set_user(EVE.user_key, "console:local", blocked=False)
    assert core.service.should_answer(replace(EVE, text="hi"))
    assert (await say(core, EVE, "hi")).kind is ReplyKind.ANSWER


async def test_a_stale_memory_of_a_block_is_not_trusted(settings: Settings) -> None:
    core = await _core(settings)
    now = [0.0]
    core.service.access = Access(core.settings, core.repo, refresh_s=60, clock=lambda: now[0])
    try:
        await core.repo.curation.set_user(EVE.user_key, "console:local", blocked=True)
        assert (await say(core, EVE, "hi")).text == BLOCKED
        assert not core.service.should_answer(replace(EVE, text="hi"))
        # Unblocked on the dashboard (no /unblock): once the memory is stale, the message
        # goes through the database check again, and is answered.
        await core.repo.curation.set_user(EVE.user_key, "console:local", blocked=False)
        now[0] = 61.0
        assert core.service.should_answer(replace(EVE, text="hi"))
        assert (await say(core, EVE, "hi")).kind is ReplyKind.ANSWER
    finally:
        await core.aclose()


async def test_the_configured_lists(settings: Settings) -> None:
    core = await _core(
        settings,
        block_users=[EVE.user_key],
        allow_users=[ANN.user_key, "telegram:88"],
        allow_chats=["telegram:-100"],
    )
    try:
        assert (await say(core, EVE, "hi")).text == BLOCKED
        stranger = Incoming("telegram", "99", "99", "Stan", "")
        assert (await say(core, stranger, "hi")).text == NOT_ALLOWED.format(user="telegram:99")
        assert not core.service.should_answer(replace(stranger, text="hi again"))
        assert (await say(core, GROUP, "@bot hi")).kind is ReplyKind.ANSWER
        thread = replace(GROUP, thread_id="5")  # a thread of an allowed chat is allowed
        assert (await say(core, thread, "@bot hi")).kind is ReplyKind.ANSWER
        other = replace(GROUP, chat_id="-200")
        refused = await say(core, other, "@bot hi")
        assert refused.text == CHAT_NOT_ALLOWED.format(chat="telegram:-200")
        assert not core.service.should_answer(replace(other, user_id="88", text="@bot x"))
        # Admins are always answered, whatever the lists say.
        assert (await say(core, ADMIN, "hi")).kind is ReplyKind.ANSWER
        assert (await say(core, replace(EVE, is_admin=True), "hi")).kind is ReplyKind.ANSWER
    finally:
        await core.aclose()


async def test_private_chats_can_be_switched_off(settings: Settings) -> None:
    core = await _core(settings, private_chats=False)
    try:
        assert (await say(core, ANN, "hi")).text == NO_PRIVATE
        assert not core.service.should_answer(replace(ANN, text="hi"))
        assert (await say(core, GROUP, "@bot hi")).kind is ReplyKind.ANSWER
        assert (await say(core, ADMIN, "/status")).kind is ReplyKind.COMMAND
        # Only who rates counts for a press: Ann may rate in the group.
        reply = await say(core, GROUP, "@bot rate this")
        assert reply.exchange_id is not None
        outcome = await core.service.rate(reply.exchange_id, ANN.user_key, Vote.UP)
        assert outcome.action is RateAction.STORED
    finally:
        await core.aclose()


async def test_a_refused_user_s_slash_style_requests_still_get_the_notice(core: Core) -> None:
    """Paths that call respond without should_answer (Discord's slash commands, the console)
    must still get a final Reply: the notice again."""
    await core.repo.curation.set_user(EVE.user_key, "console:local", blocked=True)
    for _ in range(2):
        items = await _items(core, EVE, "/help")
        assert items == [Reply(BLOCKED, ReplyKind.NOTICE)]
