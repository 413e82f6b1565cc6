"""Roles per process (bot.startup): which a configuration wants, and what happens to an
exclusive role another process on the same PostgreSQL database holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bot.app import Core, make_adapters
from bot.errors import ConfigError, StartupError
from bot.settings import Settings, load_settings
from bot.startup import claim_roles, platform_roles, wanted_roles
from migrations import upgrade_database
from storage.db import create_engine
from storage.repository import Repository


def _settings(**env: str) -> Settings:
    return load_settings(None, {"SELFTUNE_DATA_DIR": "/tmp/unused", **env})[0]


def test_wanted_roles_follow_the_configuration() -> None:
    assert wanted_roles(_settings(), console=True) == ["schedule", "console"]
    webhook = _settings(
        TELEGRAM_BOT_TOKEN="1:x",
        SELFTUNE_TELEGRAM__MODE="webhook",
        SELFTUNE_TELEGRAM__WEBHOOK_URL="https://bot.example/hook",
    )
    assert wanted_roles(webhook, console=False) == ["schedule", "telegram-webhook"]
    polling = _settings(TELEGRAM_BOT_TOKEN="1:x", DISCORD_BOT_TOKEN="y")
    assert wanted_roles(polling, console=False) == ["schedule", "telegram-polling", "discord"]
    listed = _settings(SELFTUNE_SERVING__ROLES='["telegram-webhook"]')
    assert wanted_roles(listed, console=True) == ["telegram-webhook"]


def test_a_sharded_discord_takes_one_role_per_shard() -> None:
    """Processes that split Discord's shards must not take each other's role."""
    first = _settings(
        DISCORD_BOT_TOKEN="y", SELFTUNE_DISCORD__SHARD_COUNT="4", SELFTUNE_DISCORD__SHARD_IDS="0,1"
    )
    second = _settings(
        DISCORD_BOT_TOKEN="y", SELFTUNE_DISCORD__SHARD_COUNT="4", SELFTUNE_DISCORD__SHARD_IDS="2,3"
    )
    every = _settings(DISCORD_BOT_TOKEN="y", SELFTUNE_DISCORD__SHARD_COUNT="2")
    auto = _settings(DISCORD_BOT_TOKEN="y", SELFTUNE_DISCORD__SHARD_COUNT="auto")
    assert platform_roles(first, "discord") == ["discord-shard-0", "discord-shard-1"]
    assert platform_roles(second, "discord") == ["discord-shard-2", "discord-shard-3"]
    assert platform_roles(every, "discord") == ["discord-shard-0", "discord-shard-1"]
    assert platform_roles(auto, "discord") == ["discord"]
    assert wanted_roles(second, console=False) == ["schedule", "discord-shard-2", "discord-shard-3"]


def test_an_unknown_role_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="'shedule' is not a role"):
        _settings(SELFTUNE_SERVING__ROLES='["shedule"]')
    assert _settings(SELFTUNE_SERVING__ROLES='["discord-shard-3"]').serving.roles == [
        "discord-shard-3"
    ]


@pytest.fixture
async def two(db_url: str) -> AsyncIterator[tuple[Repository, Repository]]:
    """Two processes' repositories on one migrated database."""
    first, second = Repository(create_engine(db_url)), Repository(create_engine(db_url))
    await upgrade_database(first.engine)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.mark.postgres
async def test_a_held_role_is_left_out_or_fails_as_configured(
    two: tuple[Repository, Repository],
) -> None:
    first, second = two
    if not first.coordination.shared:
        pytest.skip("SQLite: one process per data dir holds every role")
    wanted = ["schedule", "telegram-webhook", "console"]
    assert await claim_roles(_settings(), first.coordination, wanted) == set(wanted)
    # Default (roles unset): run without what another holds; the shared role stays.
    held = await claim_roles(_settings(), second.coordination, wanted)
    assert held == {"telegram-webhook"}
    listed = _settings(SELFTUNE_SERVING__ROLES='["schedule"]')
    with pytest.raises(StartupError, match="holds the role 'schedule'"):
        await claim_roles(listed, second.coordination, ["schedule"])
    skip = _settings(SELFTUNE_SERVING__ROLES='["schedule"]', SELFTUNE_SERVING__WHEN_TAKEN="skip")
    assert await claim_roles(skip, second.coordination, ["schedule"]) == set()
    await first.coordination.aclose()  # the holder exits
    assert await claim_roles(listed, second.coordination, ["schedule"]) == {"schedule"}


async def test_sqlite_claims_every_role(two: tuple[Repository, Repository]) -> None:
    first, _ = two
    if first.coordination.shared:
        pytest.skip("PostgreSQL: see the test above")
    assert await claim_roles(_settings(), first.coordination, ["schedule", "console"]) == {
        "schedule",
        "console",
    }


async def test_a_process_without_the_console_role_serves_no_console(core: Core) -> None:
    core.roles = frozenset({"telegram-webhook"})
    assert not core.holds("console") and not core.holds("schedule")
    with pytest.raises(StartupError, match="nothing left to serve"):
        make_adapters(core, "run")
    core.roles = frozenset({"console"})
    assert [a.platform for a in make_adapters(core, "run")] == ["console"]


async def test_shards_split_unevenly_between_processes_stop_the_start(core: Core) -> None:
    """A process that got some of its shards (another process holds the rest) must not sit on
    them serving none: it says which shard is in two processes' shard_ids."""
    discord = core.settings.discord.model_copy(
        update={"token": SecretStr("y"), "shard_count": 4, "shard_ids": [1, 2]}
    )
    core.settings = core.settings.model_copy(update={"discord": discord})
    core.roles = frozenset({"discord-shard-2", "console"})
    with pytest.raises(StartupError, match="holds discord-shard-2 but another one holds"):
        make_adapters(core, "run")
