"""The Discord adapter answering messages: real discord.py against the fake server.

Where it answers (DMs, mentions, reply chains, threads), streaming within Discord's edit limit,
splitting at 2000 characters, attachments, the rate limit, errors, the bot's own messages.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.discord.replies import EDIT_WINDOW
from adapters.streaming import Call, Pacer
from bot.app import Core
from bot.generation import ScriptedGenerator
from tests.fakes.discord_server import FakeDiscord, FakeUser, Json
from tests.support.records import Script


async def final_reply(fake: FakeDiscord, channel_id: int, count: int = 1) -> list[Json]:
    """Wait until ``count`` replies in the channel carry their 👍/👎 buttons."""

    def finals() -> list[Json]:
        found = [m for m in fake.bot_messages(channel_id) if m["components"]]
        return found if len(found) >= count else []

    return await fake.wait_for(finals)


async def last_text(fake: FakeDiscord, channel_id: int, needle: str) -> Json:
    """Wait for a bot message in the channel whose text contains ``needle``."""

    def with_needle() -> Json:
        return next((m for m in fake.bot_messages(channel_id) if needle in m["content"]), {})

    return await fake.wait_for(with_needle)


async def test_dm_is_answered_streamed_stored_with_buttons(bot: Core, fake: FakeDiscord) -> None:
    asked = await fake.user_says(fake.alice, "Hello there")
    dm = fake.dm_channel(fake.alice)
    [reply] = await final_reply(fake, dm)
    assert reply["content"] == "You said: Hello there"
    assert reply["message_reference"]["message_id"] == int(asked["id"])
    exchange_id = await bot.repo.last_exchange_id(f"discord:{dm}")
    assert exchange_id is not None
    assert fake.buttons(reply) == [
        ("👍 0", f"rate:{exchange_id}:1"),
        ("👎 0", f"rate:{exchange_id}:-1"),
        ("🔄", f"again:{exchange_id}"),
    ]
    exchange = await bot.repo.exchange(exchange_id)
    assert exchange is not None and exchange.user_key == f"discord:{fake.alice.id}"
    history = await bot.repo.history(f"discord:{dm}", 10)
    assert [(m.role, m.content) for m in history] == [
        ("user", "Hello there"),
        ("assistant", "You said: Hello there"),
    ]
    assert any(c.method == "POST" and c.path == f"channels/{dm}/typing" for c in fake.calls)


async def test_guild_channel_needs_a_mention(
    bot: Core, fake: FakeDiscord, scripted: ScriptedGenerator
) -> None:
    await fake.user_says(fake.alice, "just chatting with Bob", channel_id=fake.channel_id)
    await fake.user_says(fake.bob, "what is up?", channel_id=fake.channel_id, mention_bot=True)
    [reply] = await final_reply(fake, fake.channel_id)
    # The mention is gone from the text; the group prompt says who spoke.
    assert reply["content"] == "You said: Bob: what is up?"
    history = await bot.repo.history(f"discord:{fake.channel_id}", 10)
    assert [m.content for m in history if m.role == "user"] == ["what is up?"]
    assert len(scripted.requests) == 1


async def test_mentioning_the_bots_role_counts_as_a_mention(bot: Core, fake: FakeDiscord) -> None:
    content = f"<@&{fake.bot_role_id}> are you there?"
    roles = [str(fake.bot_role_id)]
    await fake.user_says(fake.alice, content, channel_id=fake.channel_id, mention_roles=roles)
    [reply] = await final_reply(fake, fake.channel_id)
    assert reply["content"] == "You said: Alice: are you there?"


async def test_reply_chain_is_followed(bot: Core, fake: FakeDiscord) -> None:
    channel = fake.channel_id
    await fake.user_says(fake.alice, "first", channel_id=channel, mention_bot=True)
    [answer] = await final_reply(fake, channel)
    human = await fake.user_says(fake.bob, "unrelated", channel_id=channel)
    await fake.user_says(fake.alice, "not to the bot", channel_id=channel, reply_to=human)
    await fake.user_says(fake.alice, "tell me more", channel_id=channel, reply_to=answer)
    replies = await final_reply(fake, channel, count=2)
    assert replies[-1]["content"] == "You said: Alice: tell me more"
    history = await bot.repo.history(f"discord:{channel}", 10)
    assert [m.content for m in history if m.role == "user"] == ["first", "tell me more"]


async def test_each_thread_is_its_own_conversation(bot: Core, fake: FakeDiscord) -> None:
    await fake.user_says(fake.alice, "in the channel", channel_id=fake.channel_id, mention_bot=True)
    await fake.user_says(fake.alice, "in the thread", channel_id=fake.thread_id, mention_bot=True)
    [in_thread] = await final_reply(fake, fake.thread_id)
    await final_reply(fake, fake.channel_id)
    assert in_thread["content"] == "You said: Alice: in the thread"
    thread_key = f"discord:{fake.channel_id}:{fake.thread_id}"
    thread = await bot.repo.history(thread_key, 10)
    channel = await bot.repo.history(f"discord:{fake.channel_id}", 10)
    assert [m.content for m in thread if m.role == "user"] == ["in the thread"]
    assert [m.content for m in channel if m.role == "user"] == ["in the channel"]


async def test_own_and_other_bots_messages_are_ignored(
    bot: Core, fake: FakeDiscord, scripted: ScriptedGenerator
) -> None:
    await fake.user_says(fake.other_bot, "hi bot", channel_id=fake.channel_id, mention_bot=True)
    await fake.user_says(fake.alice, "Hello")
    await final_reply(fake, fake.dm_channel(fake.alice))
    await asyncio.sleep(0.1)  # the echo of the bot's own reply has arrived by now
    assert len(scripted.requests) == 1  # neither the echo nor the other bot was answered
    assert fake.bot_messages(fake.channel_id) == []


async def test_long_reply_is_split_on_boundaries_never_truncated(
    bot: Core, fake: FakeDiscord, script: Script
) -> None:
    # Long words: the scripted model streams one word per token, at most 256 of them.
    sentence = "Extraordinarily detailed-explanations-of-everything-imaginable keep-on-going. "
    paragraphs = [(sentence * 12).strip() for _ in range(5)]
    script.text = "\n\n".join(paragraphs)
    assert len(script.text) > 4500
    await fake.user_says(fake.alice, "Tell me everything")
    dm = fake.dm_channel(fake.alice)
    await final_reply(fake, dm)
    messages = fake.bot_messages(dm)
    assert len(messages) >= 3
    assert all(len(m["content"]) <= 2000 for m in messages)
    assert all(m["content"].endswith(".") for m in messages)  # cut at sentence ends
    assert [bool(m["components"]) for m in messages] == [False] * (len(messages) - 1) + [True]
    assert " ".join(m["content"] for m in messages).split() == script.text.split()


@pytest.mark.parametrize("scripted", [0.04], indirect=True)
async def test_streaming_edits_stay_within_discord_limits(
    bot: Core, fake: FakeDiscord, script: Script
) -> None:
    script.text = " ".join(f"word{i}" for i in range(60))  # ~2.4 s of streaming each
    users = (fake.alice, fake.bob, fake.root)
    for user in users:
        await fake.user_says(user, "stream please", channel_id=fake.channel_id, mention_bot=True)
    replies = await final_reply(fake, fake.channel_id, count=3)
    assert all(r["content"] == script.text for r in replies)
    prefix = f"channels/{fake.channel_id}/messages/"
    edits = [c.at for c in fake.calls if c.method == "PATCH" and c.path.startswith(prefix)]
    assert fake.rate_limited == 0
    assert len(edits) >= 4  # it did stream: drafts were edited, not just sent once
    for start in edits:
        assert len([t for t in edits if start <= t < start + 5.0]) <= 5
    first_post = min(c.at for c in fake.calls if c.method == "POST" and "messages" in c.path)
    assert max(edits) - first_post > 1.5  # text was visible long before the end


async def test_attachments_and_stickers_get_a_polite_answer(
    bot: Core, fake: FakeDiscord, scripted: ScriptedGenerator
) -> None:
    dm = fake.dm_channel(fake.alice)
    photo = {"id": "1", "filename": "cat.png", "size": 10, "url": "https://x/cat.png"}
    photo["proxy_url"] = photo["url"]
    await fake.user_says(fake.alice, "", attachments=[photo])
    notice = await last_text(fake, dm, "cat.png")
    assert "only read text" in notice["content"] and not notice["components"]
    sticker = {"id": "5", "name": "wave", "format_type": 1}
    await fake.user_says(fake.alice, "", sticker_items=[sticker])
    assert "only read text" in (await last_text(fake, dm, "sticker wave"))["content"]
    assert scripted.requests == [] and await bot.repo.history(f"discord:{dm}", 10) == []
    await fake.user_says(fake.alice, "what do you think?", attachments=[photo])
    [answer] = await final_reply(fake, dm)
    assert answer["content"] == "You said: what do you think?"
    assert "left out the file cat.png" in (await last_text(fake, dm, "left out"))["content"]


@pytest.mark.parametrize(
    "settings", [{"SELFTUNE_CHAT__USER_MESSAGES_PER_MINUTE": "2"}], indirect=True
)
async def test_per_user_rate_limit(bot: Core, fake: FakeDiscord) -> None:
    dm = fake.dm_channel(fake.alice)
    for n in range(2):
        await fake.user_says(fake.alice, f"message {n}")
        await final_reply(fake, dm, count=n + 1)
    await fake.user_says(fake.alice, "message 2")
    notice = await last_text(fake, dm, "Slow down")
    assert "at most 2 messages a minute" in notice["content"] and not notice["components"]
    history = await bot.repo.history(f"discord:{dm}", 10)
    assert [m.content for m in history if m.role == "user"][-1] == "message 2"  # stored


async def test_generation_error_is_explained_and_the_bot_carries_on(
    bot: Core, fake: FakeDiscord, scripted: ScriptedGenerator
) -> None:
    dm = fake.dm_channel(fake.alice)
    scripted.fail_next = "the model is out of memory"
    await fake.user_says(fake.alice, "first try")
    error = await last_text(fake, dm, "could not write a reply")
    assert "out of memory" in error["content"] and not error["components"]
    await fake.user_says(fake.alice, "second try")
    [answer] = await final_reply(fake, dm)
    assert answer["content"] == "You said: second try"


async def test_private_answers_in_a_server_go_to_dm(bot: Core, fake: FakeDiscord) -> None:
    channel = fake.channel_id
    await fake.user_says(fake.alice, "/status", channel_id=channel, mention_bot=True)
    refusal = await last_text(fake, channel, "for admins only")
    assert f"discord:{fake.alice.id}" in refusal["content"]
    await fake.user_says(fake.ada, "/status", channel_id=channel, mention_bot=True)
    await last_text(fake, channel, "direct message")
    status = await last_text(fake, fake.dm_channel(fake.ada), "Model: scripted")
    assert "ratings" in status["content"]
    assert not any("Model:" in m["content"] for m in fake.bot_messages(channel))


async def test_empty_mention_gets_a_hint(bot: Core, fake: FakeDiscord) -> None:
    await fake.user_says(fake.alice, "", channel_id=fake.channel_id, mention_bot=True)
    notice = await last_text(fake, fake.channel_id, "Empty message")
    assert "/help" in notice["content"]


@pytest.mark.parametrize("scripted", [0.01], indirect=True)
async def test_fifty_users_at_once_are_all_answered_and_stored(
    bot: Core, fake: FakeDiscord
) -> None:
    users = [FakeUser(fake.new_id(), f"user{n}") for n in range(50)]
    began = time.monotonic()
    for n, user in enumerate(users):
        await fake.user_says(user, f"Hello from user {n}")
    for user in users:
        await final_reply(fake, fake.dm_channel(user))
    took = time.monotonic() - began
    for n, user in enumerate(users):
        history = await bot.repo.history(f"discord:{fake.dm_channel(user)}", 10)
        assert [m.content for m in history] == [
            f"Hello from user {n}",
            f"You said: Hello from user {n}",
        ]
    assert (await bot.repo.stats.counts()).exchanges == 50
    assert fake.rate_limited == 0 and took < 20


async def test_edit_window_keeps_a_slot_for_each_streaming_reply() -> None:
    now = [0.0]
    pacer = Pacer(1.1, window=EDIT_WINDOW, clock=lambda: now[0])  # Discord's, on a fake clock
    channel = 7
    pacer.streaming(channel, +1)  # two replies streaming in one channel
    pacer.streaming(channel, +1)
    drafts = []
    for step in range(50):  # 4.9 s of drafts offered every 0.1 s
        now[0] = step / 10
        if pacer.delay(channel, Call.DRAFT) == 0:
            async with pacer.turn(channel, Call.DRAFT), pacer.edit(channel, wait=False):
                pass
            drafts.append(now[0])
    assert drafts == [0.0, 1.1, 2.2]  # paced, and 2 of the 5 slots left for the finals
    for _ in range(2):  # both finals land at once
        async with asyncio.timeout(0.01), pacer.edit(channel, wait=True):
            pass
    pacer.streaming(channel, -2)  # both replies are final now
    assert pacer.delay(channel, Call.DRAFT) > 0  # 5 edits in the last 5 s: the window is full
    now[0] = 5.1  # the window has moved past the first draft
    assert pacer.delay(channel, Call.DRAFT) == 0
