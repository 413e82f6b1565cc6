"""Starting the Discord adapter: configuration, clear start-up errors, messages from the core."""

from __future__ import annotations

import logging

import pytest

from adapters.discord.adapter import DiscordAdapter, DiscordStartupError
from adapters.discord.incoming import target_channel_id
from adapters.discord.private import user_id_of
from adapters.discord.sdk import discord
from bot.app import Core, make_adapters
from bot.errors import StartupError
from bot.settings import DiscordSettings
from tests.fakes.discord_server import FakeDiscord, discord_settings, run_bot


def test_defaults_are_discords_own_endpoints() -> None:
    defaults = DiscordSettings()
    assert defaults.api_base == "https://discord.com/api/v10"
    assert defaults.gateway_url == "wss://gateway.discord.gg/"
    assert defaults.token is None and defaults.edit_interval_s >= 1.0


async def test_missing_message_content_intent_says_what_to_enable(core: Core) -> None:
    async with FakeDiscord(allow_message_content=False) as strict:
        settings = discord_settings(core.settings.data_dir, strict)
        with pytest.raises(DiscordStartupError) as caught:
            async with run_bot(core.service, settings, strict):
                pass
    message = str(caught.value)
    assert "Message Content Intent" in message and "developer portal" in message
    assert isinstance(caught.value, StartupError)  # the CLI prints it without a traceback
    assert strict.identify_intents and strict.identify_intents[0] & (1 << 15)


async def test_wrong_token_is_a_clear_error(core: Core, fake: FakeDiscord) -> None:
    wrong = discord_settings(core.settings.data_dir, fake, DISCORD_BOT_TOKEN="not-the-token")
    with pytest.raises(DiscordStartupError, match="rejected the bot token") as caught:
        async with run_bot(core.service, wrong, fake):
            pass
    assert "not-the-token" not in str(caught.value)


async def test_unreachable_server_is_a_clear_error(core: Core, fake: FakeDiscord) -> None:
    port = fake.port
    async with FakeDiscord() as gone:
        dead = discord_settings(core.settings.data_dir, gone)
    assert gone.port != port
    with pytest.raises(DiscordStartupError, match=r"cannot reach Discord at http://127\.0\.0\.1"):
        async with run_bot(core.service, dead, fake):
            pass


async def test_endpoints_and_intents_come_from_settings(
    core: Core, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_bot(core.service, core.settings, fake) as adapter:
        routes, gateway = discord.http.Route, discord.gateway.DiscordWebSocket
        assert (routes.BASE, str(gateway.DEFAULT_GATEWAY)) == (fake.api_base, fake.gateway_url)
        assert adapter.client is not None and adapter.client.intents.message_content
    assert fake.token not in caplog.text  # the token is never logged, even at DEBUG


async def test_run_mode_builds_the_discord_adapter(core: Core) -> None:
    assert core.outbox.private_notifier("discord:7") is None
    [adapter] = make_adapters(core, "run")
    assert isinstance(adapter, DiscordAdapter) and adapter.platform == "discord"
    assert core.outbox.private_notifier("discord:7") is not None  # DMs to Discord users


async def test_core_messages_reach_channels_and_threads(core: Core, fake: FakeDiscord) -> None:
    async with run_bot(core.service, core.settings, fake) as adapter:
        core.outbox.register(adapter.platform, adapter.send)
        await core.outbox.send(f"discord:{fake.channel_id}", "Training started. " * 150)
        await core.outbox.send(f"discord:{fake.channel_id}:{fake.thread_id}", "Training done.")
        await fake.wait_for(lambda: fake.bot_messages(fake.thread_id))
    in_channel = fake.bot_messages(fake.channel_id)
    assert len(in_channel) == 2 and all(len(m["content"]) <= 2000 for m in in_channel)
    assert [m["content"] for m in fake.bot_messages(fake.thread_id)] == ["Training done."]


def test_user_keys_name_the_user_to_dm() -> None:
    assert user_id_of("discord:42") == 42
    for bad in ("telegram:42", "discord:", "discord:x", "discord:1:2"):
        with pytest.raises(ValueError):
            user_id_of(bad)


def test_chat_keys_name_the_channel_to_post_in() -> None:
    assert target_channel_id("discord:5") == 5
    assert target_channel_id("discord:5:77") == 77
    for bad in ("telegram:5", "discord:", "discord:x", "discord:1:2:3"):
        with pytest.raises(ValueError):
            target_channel_id(bad)


async def test_sending_before_connecting_fails_loudly(core: Core) -> None:
    adapter = DiscordAdapter(core.service, core.settings.discord)
    with pytest.raises(RuntimeError, match="not connected"):
        await adapter.send("discord:5", "hello")
    with pytest.raises(RuntimeError, match="not connected"):
        await adapter.send_private("discord:5", "hello")
