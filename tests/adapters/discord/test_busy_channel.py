"""Many replies streaming at once in one Discord channel: every final text lands, within the
edit window, however late each edit reaches the server."""

from __future__ import annotations

import time

import pytest

from bot.app import Core
from tests.fakes.discord_server import FakeDiscord, FakeUser, Json
from tests.support.records import Script

USERS = 12


def uneven_latency(n: int) -> float:
    """Every other edit takes 0.3 s to reach the server, the rest none: far more jitter than
    a margin on the window could absorb."""
    return 0.3 if n % 2 == 0 else 0.0


@pytest.mark.parametrize("scripted", [0.02], indirect=True)
async def test_every_final_lands_when_a_busy_channel_edits_with_uneven_latency(
    bot: Core, fake: FakeDiscord, script: Script
) -> None:
    script.text = " ".join(f"word{i}" for i in range(25))  # ~0.5 s of drafts each
    fake.edit_latency = uneven_latency
    users = [FakeUser(fake.new_id(), f"user{n}") for n in range(USERS)]
    began = time.monotonic()
    for user in users:
        await fake.user_says(user, "stream please", channel_id=fake.channel_id, mention_bot=True)

    def finals() -> list[Json]:
        done = [m for m in fake.bot_messages(fake.channel_id) if m["components"]]
        return done if len(done) >= USERS else []

    replies = await fake.wait_for(finals, within_s=18.0)
    assert [r["content"] for r in replies] == [script.text] * USERS
    assert fake.rate_limited == 0, "the pacer let an edit through that Discord refuses"
    # No draft is left behind: each reply's messages end with its final text.
    assert all(m["components"] for m in fake.bot_messages(fake.channel_id))
    assert time.monotonic() - began < 18.0


@pytest.mark.parametrize("scripted", [0.05], indirect=True)
async def test_a_final_discord_keeps_refusing_is_sent_as_a_new_message(
    bot: Core, fake: FakeDiscord, script: Script
) -> None:
    script.text = " ".join(f"word{i}" for i in range(30))  # ~1.5 s of drafts
    await fake.user_says(fake.alice, "stream please", channel_id=fake.channel_id, mention_bot=True)
    [draft] = await fake.wait_for(lambda: fake.bot_messages(fake.channel_id))
    # Every edit from now on is refused: discord.py tries each 5 times, then gives up.
    fake.refuse_edits = 1000

    def final() -> list[Json]:
        return [m for m in fake.bot_messages(fake.channel_id) if m["components"]]

    [reply] = await fake.wait_for(final, within_s=15.0)
    assert reply["content"] == script.text and reply["id"] != draft["id"]
    # The stale draft is gone: only the final text is left on screen.
    await fake.wait_for(lambda: fake.bot_messages(fake.channel_id) == [reply])
