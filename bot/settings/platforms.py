"""The chat platforms: one settings section each, and the ``PLATFORMS`` table.

A platform is declared here once: its section (with the environment variable its bot token may
come from and the fields that are secrets) and its entry in ``PLATFORMS`` (the ``Settings``
attribute that holds the section, where its adapter is, how the core reaches a user privately).
``bot.settings.load`` reads the token variables from here, ``bot.logs`` masks the secrets, and
``bot.app.make_adapters`` builds an adapter for every entry whose token is set.

Adding a platform: its adapter package under ``adapters/``, its section and entry here, a field
on ``Settings`` in ``load.py`` (then ``python -m bot.settings.docs``), and its SDK in
``pyproject.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from bot.settings.base import Section


class PlatformSection(Section):
    """What every platform's section has: a bot token, which may also come from the
    environment variable ``token_env``; the platform is served when the token is set."""

    token_env: ClassVar[str]
    secret_fields: ClassVar[tuple[str, ...]] = ("token",)

    token: SecretStr | None = Field(None, description="Bot token.")

    @property
    def configured(self) -> bool:
        """Whether ``selftune run`` serves this platform (its token is set)."""
        return self.token is not None


class TelegramSettings(PlatformSection):
    """The Telegram bot (python-telegram-bot): polling or a webhook, and the Bot API's limits."""

    token_env: ClassVar[str] = "TELEGRAM_BOT_TOKEN"
    secret_fields: ClassVar[tuple[str, ...]] = ("token", "secret_token")

    token: SecretStr | None = Field(None, description="Bot token (or TELEGRAM_BOT_TOKEN).")
    base_url: str | None = Field(None, description="Bot API base, for a self-hosted server.")
    base_file_url: str | None = Field(None, description="File base, for a self-hosted server.")
    mode: Literal["polling", "webhook"] = Field("polling", description="How updates arrive.")
    webhook_url: str | None = Field(
        None,
        validate_default=True,
        description="Webhook mode: public URL Telegram posts updates to; its path is also the "
        "path listened on.",
    )
    listen: str = Field("0.0.0.0", description="Webhook mode: address to listen on.")
    port: int = Field(8443, ge=1, le=65535, description="Webhook mode: port to listen on.")
    secret_token: SecretStr | None = Field(
        None, description="Webhook mode: secret Telegram sends with each update."
    )
    edit_interval_s: float = Field(
        1.0,
        ge=0.0,
        le=60.0,
        description="Least time between two edits in one chat while a reply streams "
        "(Telegram allows about one a second).",
    )
    max_requests_per_second: float = Field(
        30.0, ge=0.0, description="Bot API requests per second in all (0 = no limit)."
    )
    max_requests_per_minute_per_group: float = Field(
        20.0, ge=0.0, description="Bot API requests per minute into one group (0 = no limit)."
    )
    concurrent_updates: int = Field(
        256, ge=1, description="Updates handled at once, so many chats are answered together."
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0.0,
        description="On shutdown, how long replies in progress may take before they are cut off.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_needs_url(cls, value: str | None, info: Any) -> str | None:
        # `mode` is declared first, so it is already validated when this runs.
        if info.data.get("mode") == "webhook" and not value:
            raise ValueError("webhook mode needs telegram.webhook_url (the public https URL)")
        return value


class DiscordSettings(PlatformSection):
    """The Discord bot (discord.py): endpoints, admin role, edit pacing, slash commands, shards."""

    token_env: ClassVar[str] = "DISCORD_BOT_TOKEN"

    token: SecretStr | None = Field(None, description="Bot token (or DISCORD_BOT_TOKEN).")
    api_base: str = Field(
        "https://discord.com/api/v10",
        description="REST base URL (with the API version), e.g. a Discord-compatible server's.",
    )
    gateway_url: str = Field(
        "wss://gateway.discord.gg/", description="Gateway WebSocket URL (ws:// or wss://)."
    )
    admin_role_id: int | None = Field(None, description="Members with this role are admins.")
    edit_interval_s: float = Field(
        1.1,
        ge=1.0,
        le=60.0,
        description="Least seconds between streaming edits in one channel (Discord allows 5 "
        "edits per 5 s per channel).",
    )
    sync_commands: bool = Field(
        True, description="Register the slash commands with Discord at start-up."
    )
    guild_ready_timeout_s: float = Field(
        2.0,
        ge=0.0,
        le=60.0,
        description="Seconds to wait for the servers (guilds) list at connect before 'ready'.",
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0.0,
        description="On shutdown, how long replies in progress may take before they are cut off.",
    )
    shard_count: int | Literal["auto"] | None = Field(
        None,
        description="Gateway shards in all, across every process (Discord requires sharding "
        "past 2500 servers); 'auto': the number Discord recommends; unset: one connection.",
    )
    shard_ids: list[int] | None = Field(
        None,
        description="The shards this process serves, e.g. [0, 1] (needs a number "
        "shard_count); unset: all of them. The process with shard 0 gets the direct messages.",
    )

    @field_validator("shard_count", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        # One clear message rather than pydantic's one per member of the union.
        if value is None:
            return value
        text = str(value).strip()
        if text == "auto":
            return text
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise ValueError(
                f"shard_count must be a whole number from 1 up, or 'auto', not {text!r}"
            )
        return int(text)

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _ids_from_text(cls, value: Any) -> Any:
        # An environment variable holds text: "[0, 1]" (JSON) or "0,1".
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("shard_ids")
    @classmethod
    def _ids_fit_count(cls, ids: list[int] | None, info: Any) -> list[int] | None:
        # `shard_count` is declared first, so it is already validated when this runs.
        count = info.data.get("shard_count")
        if ids is None:
            return ids
        if not isinstance(count, int):
            raise ValueError("shard_ids needs shard_count set to the number of shards in all")
        if not ids:
            raise ValueError("shard_ids is empty: list the shards this process serves")
        if len(set(ids)) != len(ids):
            raise ValueError(f"shard_ids lists a shard twice: {ids}")
        if any(not 0 <= i < count for i in ids):
            raise ValueError(
                f"shard_ids {ids}: each must be from 0 to shard_count - 1 ({count - 1})"
            )
        return ids

    @property
    def sharded(self) -> bool:
        """Whether the bot connects as shards (discord.py's AutoShardedClient)."""
        return self.shard_count is not None


PrivateRoute = Literal["chat", "dm"]


@dataclass(frozen=True)
class Platform:
    """One chat platform, as the composition root sees it.

    ``private`` says how the core writes to a user privately (training progress after a
    ``/finetune`` asked in a group): ``"chat"``, the user's private chat with the bot has the
    user's id as its id, so the user key is a chat key and the ordinary sender reaches it
    (Telegram, once the user has opened the chat); ``"dm"``, the adapter's
    ``send_private(user_key, text)`` opens a direct message (Discord); ``None``, it cannot.
    """

    name: str  # the Incoming.platform of its messages, and the Settings attribute of its section
    section: type[PlatformSection]
    adapter: str  # "module:Class", built as Class(chat_core, section); imported only when served
    private: PrivateRoute | None


PLATFORMS: tuple[Platform, ...] = (
    Platform("telegram", TelegramSettings, "adapters.telegram.adapter:TelegramAdapter", "chat"),
    Platform("discord", DiscordSettings, "adapters.discord.adapter:DiscordAdapter", "dm"),
)
