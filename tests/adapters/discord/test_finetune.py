"""/finetune in a server channel: progress and the gate's verdict reach the admin by DM, over
the adapter that ``make_adapters`` wires; with DMs closed the channel hears only a short note."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from adapters.discord.adapter import DiscordAdapter
from bot.app import Core, make_adapters
from bot.settings import Settings
from bot.types import RunStatus
from tests.fakes.discord_server import EPHEMERAL, FakeDiscord, Json, run_bot
from tests.support.trainers import trained_core


@pytest.fixture
async def trained(settings: Settings) -> AsyncIterator[Core]:
    """A core that can fine-tune (a fake trainer whose candidate passes the gate), with 40
    rated replies in Discord DMs to train on."""
    core = await trained_core(settings, "discord", first_chat=900)
    try:
        yield core
    finally:
        await core.aclose()


def _adapter(core: Core) -> DiscordAdapter:
    [adapter] = make_adapters(core, "run")  # registers its senders with the core's outbox
    assert isinstance(adapter, DiscordAdapter)
    return adapter


async def _finetune(core: Core, fake: FakeDiscord) -> Json:
    """Root (admin by role) runs /finetune in the guild channel; returns its answer."""
    record = await fake.slash("finetune", fake.root, fake.channel_id)
    [answer] = await fake.wait_answered(record)
    assert core.finetuner is not None
    outcome = await core.finetuner.wait()
    assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
    return answer


def _texts(messages: list[Json]) -> list[str]:
    return [m["content"] for m in messages]


async def test_progress_and_verdict_reach_the_admin_by_dm(trained: Core, fake: FakeDiscord) -> None:
    async with run_bot(trained.service, trained.settings, fake, _adapter(trained)):
        answer = await _finetune(trained, fake)
        assert answer["flags"] & EPHEMERAL and "Fine-tuning started" in answer["content"]
        dm = fake.dm_channel(fake.root)
        await fake.wait_for(
            lambda: any("passed the gate" in t for t in _texts(fake.bot_messages(dm)))
        )
        texts = _texts(fake.bot_messages(dm))
    assert any("Training: step 2/2" in t for t in texts)
    assert "passed the gate (reward margin 0.500 vs 0.300" in texts[-1]
    assert all(len(t) <= 2000 for t in texts)
    # Nothing public in the channel (only the ephemeral answer), and the DM opened once.
    assert fake.bot_messages(fake.channel_id) == []
    assert len([c for c in fake.calls if c.path == "users/@me/channels"]) == 1


async def test_with_dms_closed_the_channel_hears_a_short_note(
    trained: Core, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    fake.dms_closed.add(fake.root.id)
    caplog.set_level(logging.DEBUG)
    async with run_bot(trained.service, trained.settings, fake, _adapter(trained)):
        await _finetune(trained, fake)
        [note] = await fake.wait_for(lambda: fake.bot_messages(fake.channel_id))
    assert note["content"].startswith(f"<@{fake.root.id}> ")
    assert "direct message" in note["content"] and "Allow direct messages" in note["content"]
    for secret in ("reward margin", "0.500", "loss", "passed"):
        assert secret not in note["content"]  # admin output stays out of the channel
    assert fake.bot_messages(fake.channel_id) == [note]  # one note, not one per message
    assert fake.bot_messages(fake.dm_channel(fake.root)) == []
    assert "HTTP 403, code 50007" in caplog.text and fake.token not in caplog.text


async def test_a_mentioned_command_in_a_channel_also_reports_by_dm(
    trained: Core, fake: FakeDiscord
) -> None:
    async with run_bot(trained.service, trained.settings, fake, _adapter(trained)):
        await fake.user_says(fake.root, "/finetune", channel_id=fake.channel_id, mention_bot=True)
        dm = fake.dm_channel(fake.root)
        await fake.wait_for(
            lambda: any("passed the gate" in t for t in _texts(fake.bot_messages(dm)))
        )
        assert trained.finetuner is not None and await trained.finetuner.wait() is not None
        texts = _texts(fake.bot_messages(dm))
        assert "Fine-tuning started" in texts[0]
        assert any("Training: step" in t for t in texts)
        # The channel hears only that the answer went to a DM.
        assert [m["content"] for m in fake.bot_messages(fake.channel_id)] == [
            "That answer is only for you: I sent it to you in a direct message."
        ]
