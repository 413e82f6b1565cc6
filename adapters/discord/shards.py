"""Sharding: which gateway connection gets which events, and the client's shard options.

Discord sends a server's (guild's) events only to the shard ``(guild_id >> 22) % shard_count``
and direct messages only to shard 0. Past 2 500 servers a bot must shard; several processes
then each serve some shards (``discord.shard_ids``), and each answers only what its shards
receive, so the process with shard 0 answers the direct messages.
"""

from __future__ import annotations

from typing import Any

from adapters.discord.sdk import discord
from bot.settings import DiscordSettings


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard that receives the events of ``guild_id`` (``None``: a direct message)."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def client_options(settings: DiscordSettings) -> dict[str, Any]:
    """``AutoShardedClient``'s keyword arguments; none for 'auto', where discord.py asks
    Discord (``GET /gateway/bot``) how many shards to run, and runs them all."""
    options: dict[str, Any] = {}
    if isinstance(settings.shard_count, int):
        options["shard_count"] = settings.shard_count
    if settings.shard_ids is not None:
        options["shard_ids"] = list(settings.shard_ids)
    return options


def served_shards(client: discord.Client) -> list[int] | None:
    """The shards this client serves once connected; ``None`` when it is not sharded."""
    count = client.shard_count
    if not isinstance(client, discord.AutoShardedClient) or count is None:
        return None
    return list(client.shard_ids) if client.shard_ids else list(range(count))


def receives(client: discord.Client, guild_id: int | None) -> bool:
    """Whether ``client`` gets the events of ``guild_id`` (``None``: direct messages)."""
    shards, count = served_shards(client), client.shard_count
    if shards is None or count is None:
        return True  # one connection: everything comes to it
    return shard_of(guild_id, count) in shards
