"""Sharding: ``discord.shard_count`` / ``discord.shard_ids``, discord.py's AutoShardedClient
against the fake's shard routing (a guild's events to its shard, DMs to shard 0).

Here two adapters share one core in one process; ``tests/e2e/test_discord_shards.py`` runs two
``selftune run`` processes on one database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from adapters.discord.adapter import (
    DiscordAdapter,
    SelftuneClient,
    ShardedSelftuneClient,
    make_client,
)
from adapters.discord.messages import delivery_platform
from adapters.discord.sdk import discord
from adapters.discord.shards import client_options, receives, shard_of
from bot.app import Core
from bot.errors import ConfigError
from bot.settings import DiscordSettings, Settings, load_settings
from tests.fakes.common import running
from tests.fakes.discord_server import FakeDiscord, Json, discord_settings


def shard_settings(tmp_path: Path, fake: FakeDiscord, count: str, ids: str | None) -> Settings:
    extra = {"SELFTUNE_DISCORD__SHARD_COUNT": count}
    if ids is not None:
        extra["SELFTUNE_DISCORD__SHARD_IDS"] = ids
    return discord_settings(tmp_path / "data", fake, **extra)


@asynccontextmanager
async def serving(core: Core, *sections: DiscordSettings) -> AsyncIterator[list[DiscordAdapter]]:
    """One adapter per section, all on ``core``, connected until the block ends."""
    async with AsyncExitStack() as stack:
        adapters = [DiscordAdapter(core.service, section) for section in sections]
        for adapter in adapters:
            await stack.enter_async_context(running(adapter, within=10.0))
        yield adapters


async def answers(fake: FakeDiscord, asked: Json) -> list[Json]:
    """The bot's final replies (with 👍/👎) to the message ``asked``, once there is one."""

    def finals() -> list[Json]:
        return [
            m
            for m in fake.messages.values()
            if m["author"]["id"] == str(fake.bot.id)
            and m["components"]
            and str(m.get("message_reference", {}).get("message_id")) == asked["id"]
        ]

    return await fake.wait_for(finals)


# -- settings -----------------------------------------------------------------------------------


def load(**env: str) -> DiscordSettings:
    settings, _ = load_settings(None, {"SELFTUNE_DATA_DIR": "/nonexistent", **env})
    return settings.discord


def test_unsharded_by_default() -> None:
    section = DiscordSettings()
    assert (section.shard_count, section.shard_ids, section.sharded) == (None, None, False)


@pytest.mark.parametrize(
    ("count", "ids", "expected"),
    [
        ("2", None, (2, None)),
        ("auto", None, ("auto", None)),
        (" auto ", None, ("auto", None)),
        ("4", "[1, 3]", (4, [1, 3])),
        ("4", "1,3", (4, [1, 3])),
        ("1", "[0]", (1, [0])),
    ],
)
def test_shard_settings_from_the_environment(
    count: str, ids: str | None, expected: tuple[object, object]
) -> None:
    env = {"SELFTUNE_DISCORD__SHARD_COUNT": count}
    if ids is not None:
        env["SELFTUNE_DISCORD__SHARD_IDS"] = ids
    section = load(**env)
    assert (section.shard_count, section.shard_ids) == expected and section.sharded


def test_shard_settings_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "selftune.toml"
    path.write_text("[discord]\nshard_count = 3\nshard_ids = [2, 0]\n")
    settings, _ = load_settings(path, {"SELFTUNE_DATA_DIR": str(tmp_path)})
    assert (settings.discord.shard_count, settings.discord.shard_ids) == (3, [2, 0])


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SELFTUNE_DISCORD__SHARD_COUNT": "0"}, "shard_count must be a whole number from 1"),
        ({"SELFTUNE_DISCORD__SHARD_COUNT": "many"}, "or 'auto', not 'many'"),
        ({"SELFTUNE_DISCORD__SHARD_IDS": "[0]"}, "shard_ids needs shard_count set"),
        (
            {"SELFTUNE_DISCORD__SHARD_COUNT": "auto", "SELFTUNE_DISCORD__SHARD_IDS": "[0]"},
            "shard_ids needs shard_count set",
        ),
        (
            {"SELFTUNE_DISCORD__SHARD_COUNT": "2", "SELFTUNE_DISCORD__SHARD_IDS": "[2]"},
            "each must be from 0 to shard_count - 1 (1)",
        ),
        (
            {"SELFTUNE_DISCORD__SHARD_COUNT": "2", "SELFTUNE_DISCORD__SHARD_IDS": "[-1]"},
            "each must be from 0",
        ),
        (
            {"SELFTUNE_DISCORD__SHARD_COUNT": "3", "SELFTUNE_DISCORD__SHARD_IDS": "[1, 1]"},
            "lists a shard twice",
        ),
        (
            {"SELFTUNE_DISCORD__SHARD_COUNT": "2", "SELFTUNE_DISCORD__SHARD_IDS": "[]"},
            "shard_ids is empty",
        ),
    ],
)
def test_bad_shard_settings_are_clear_errors(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**env)
    message = str(caught.value)
    assert says in message and "discord.shard_" in message


# -- the client ---------------------------------------------------------------------------------


def test_discords_shard_rule() -> None:
    guild = (1234 << 22) | 99  # the shard is in the timestamp bits, above bit 22
    assert [shard_of(guild, n) for n in (1, 2, 5)] == [0, 0, 1234 % 5]
    assert shard_of(None, 7) == 0  # direct messages: shard 0


def test_client_options_follow_the_settings() -> None:
    assert client_options(DiscordSettings(shard_count="auto")) == {}
    assert client_options(DiscordSettings(shard_count=4)) == {"shard_count": 4}
    both = DiscordSettings(shard_count=4, shard_ids=[3, 1])
    assert client_options(both) == {"shard_count": 4, "shard_ids": [3, 1]}


async def test_plain_client_unless_sharded(core: Core, fake: FakeDiscord, tmp_path: Path) -> None:
    plain = DiscordAdapter(core.service, core.settings.discord)
    client = make_client(plain, core.settings.discord)
    assert type(client) is SelftuneClient and receives(client, fake.guild_id)
    sharded = shard_settings(tmp_path, fake, "4", "[1, 2]").discord
    client = make_client(DiscordAdapter(core.service, sharded), sharded)
    assert isinstance(client, ShardedSelftuneClient)
    assert isinstance(client, discord.AutoShardedClient)
    assert (client.shard_count, client.shard_ids) == (4, [1, 2])
    assert receives(client, (5 << 22) | 1) and not receives(client, (4 << 22) | 1)
    assert not receives(client, None)  # DMs: shard 0 is another process's


async def test_two_shard_sets_each_answer_their_own_guilds_and_dms_on_shard_0(
    core: Core, fake: FakeDiscord, tmp_path: Path
) -> None:
    guild_1, channel_1 = fake.add_guild((1, 2))
    guild_0, channel_0 = fake.add_guild((0, 2))
    first = shard_settings(tmp_path, fake, "2", "[0]").discord
    second = shard_settings(tmp_path, fake, "2", "[1]").discord
    async with serving(core, first, second) as (zero, one):
        assert sorted(fake.identify_shards) == [(0, 2), (1, 2)]
        assert zero.client is not None and one.client is not None
        on_0 = {g for g in fake.guild_ids if shard_of(g, 2) == 0}
        assert guild_0 in on_0 and guild_1 not in on_0
        assert {g.id for g in zero.client.guilds} == on_0
        assert {g.id for g in one.client.guilds} == set(fake.guild_ids) - on_0
        asked = [
            await fake.user_says(
                fake.alice, "on shard one", channel_id=channel_1, mention_bot=True
            ),
            await fake.user_says(fake.bob, "on shard zero", channel_id=channel_0, mention_bot=True),
            await fake.user_says(fake.alice, "in a DM"),
        ]
        for message in asked:
            assert len(await answers(fake, message)) == 1
    stored = await core.repo.history(f"discord:{channel_1}", 10)
    assert [m.role for m in stored] == ["user", "assistant"]


async def test_auto_asks_discord_how_many_shards(
    core: Core, fake: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_pause(self: object, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py waits 5 s between two IDENTIFYs (Discord's pace); the fake needs none."""

    monkeypatch.setattr(ShardedSelftuneClient, "before_identify_hook", no_pause)
    fake.recommended_shards = 2
    _, channel_1 = fake.add_guild((1, 2))
    auto = shard_settings(tmp_path, fake, "auto", None).discord
    async with serving(core, auto) as (adapter,):
        assert any(c.path == "gateway/bot" for c in fake.calls)
        assert fake.identify_shards == [(0, 2), (1, 2)]
        assert adapter.client is not None and len(adapter.client.guilds) == 2
        asked = await fake.user_says(fake.bob, "both shards here", channel_id=channel_1)
        asked_dm = await fake.user_says(fake.bob, "and DMs")
        assert len(await answers(fake, asked_dm)) == 1
        mentioned = await fake.user_says(
            fake.bob, "now?", channel_id=channel_1, mention_bot=True, reply_to=asked
        )
        assert len(await answers(fake, mentioned)) == 1


async def test_restart_recovers_only_its_own_shards_messages(
    core: Core, fake: FakeDiscord, tmp_path: Path
) -> None:
    deliveries, platform = core.service.deliveries, delivery_platform(discord.Object(fake.bot.id))
    interrupted = {}  # shard -> a message recorded, then the crash before its answer
    for shard in (0, 1):
        guild, channel = fake.add_guild((shard, 2))
        message = fake.compose(fake.alice, f"still there, {shard}?", channel, mention_bot=True)
        place = {"channel_id": str(channel), "guild_id": str(guild)}
        assert await deliveries.receive_one(platform, message["id"], place)
        interrupted[shard] = message
    fetched = {s: f"channels/{m['channel_id']}/messages/{m['id']}" for s, m in interrupted.items()}
    async with serving(core, shard_settings(tmp_path, fake, "2", "[0]").discord):
        assert len(await answers(fake, interrupted[0])) == 1
    assert not any(c.path == fetched[1] for c in fake.calls), "shard 0 took shard 1's message"
    async with serving(core, shard_settings(tmp_path, fake, "2", "[1]").discord):
        assert len(await answers(fake, interrupted[1])) == 1
    assert [c.path for c in fake.calls].count(fetched[0]) == 1  # answered once, not again
