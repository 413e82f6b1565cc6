"""The Discord adapter (discord.py 2.x): one ``discord.Client`` run inside selftune's event loop.

``run()`` logs in and connects with ``Client.start`` (never ``Client.run``, which owns the loop),
so Discord, Telegram and the core share one asyncio loop. The REST base and gateway URLs are
settings (``discord.api_base``, ``discord.gateway_url``), so the bot can talk to a
Discord-compatible server, and the tests to a fake one. With ``discord.shard_count`` set the
client is discord.py's ``AutoShardedClient`` serving ``discord.shard_ids`` (see ``shards``):
several processes on one database then share the servers, each answering its shards' messages.

What a crash can lose here. Discord's gateway does not send an event again to a new session,
so delivery cannot be at least once end to end as on Telegram. What is kept: a message the bot
will answer is recorded (``deliveries``, by message id) and stored by the core before it is
answered, and marked done once answered; at the next start the ones a crash interrupted (the
replies being generated) are fetched again by id and answered, a reply written before the
crash shown from the database rather than written again. What is lost: an event the process
received but had not yet recorded (a few milliseconds), and every message sent while the bot
was down (the gateway does not replay them; they stay in the channel, unanswered). A partial
draft left by the crash stays on screen above the new answer. Button presses and slash
commands are interactions: a crash before the answer makes Discord show "interaction failed",
and the user presses again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp
import yarl

from adapters.base import ChatCore
from adapters.discord.incoming import PLATFORM, target_channel_id
from adapters.discord.messages import MessageHandler, delivery_platform
from adapters.discord.private import DirectMessages
from adapters.discord.rating import AgainButton, RateButton, RatingHandler
from adapters.discord.replies import send_pieces
from adapters.discord.sdk import app_commands, discord
from adapters.discord.shards import client_options, receives, served_shards
from adapters.discord.slash import SlashCommands
from bot.errors import StartupError
from bot.settings import DiscordSettings

log = logging.getLogger(__name__)

NEEDS_MESSAGE_CONTENT = (
    "Discord refused the connection: this bot needs the privileged Message Content intent to "
    "read messages. Enable it in the Discord developer portal: Applications → (your bot) → "
    "Bot → Privileged Gateway Intents → turn on 'Message Content Intent' → Save Changes; then "
    "start selftune again."
)
BAD_TOKEN = (
    "Discord rejected the bot token. Copy it again from the developer portal (Applications → "
    "(your bot) → Bot → Reset Token) into DISCORD_BOT_TOKEN or discord.token."
)


class DiscordStartupError(StartupError):
    """Discord cannot be served; the message says what the operator should do."""


def configure_endpoints(settings: DiscordSettings) -> None:
    """Point discord.py at the configured REST base and gateway (Discord's own by default).

    Both are class attributes in discord.py, so this holds for the whole process: one Discord
    server per process, which is what a deployment has.
    """
    discord.http.Route.BASE = settings.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


class SelftuneClient(discord.Client):
    """The discord.py client: event plumbing only; the adapter's handlers do the work."""

    def __init__(self, adapter: DiscordAdapter, settings: DiscordSettings, **shards: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: without it every message text is empty
        super().__init__(
            intents=intents,
            # Model output must never ping @everyone, a role or a user.
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=settings.guild_ready_timeout_s,
            **shards,  # only ShardedSelftuneClient has any
        )
        self.tree: app_commands.CommandTree[SelftuneClient] = app_commands.CommandTree(self)
        self.ratings = adapter.ratings  # where RateButton finds its handler
        self._adapter = adapter
        self._settings = settings

    async def setup_hook(self) -> None:
        """After login, before the gateway: persistent buttons and slash commands."""
        self.add_dynamic_items(RateButton, AgainButton)
        names = self._adapter.slash.register(self.tree)
        if not self._settings.sync_commands:
            return
        try:
            await self.tree.sync()
        except discord.HTTPException as exc:
            # Messages and buttons still work; only the slash menu is missing.
            log.warning("could not register the slash commands with Discord: %s", exc)
        else:
            log.info("slash commands registered: /%s", ", /".join(names))

    async def on_ready(self) -> None:
        shards = served_shards(self)
        where = f", shards {shards} of {self.shard_count}" if shards is not None else ""
        log.info("connected to Discord as %s (%d servers%s)", self.user, len(self.guilds), where)
        self._adapter.ready.set()
        self._adapter.track(self._adapter.recover())

    async def on_message(self, message: discord.Message) -> None:
        if self.user is not None:
            await self._adapter.messages.handle(message, self.user)

    async def on_interaction(self, interaction: discord.Interaction[discord.Client]) -> None:
        await self.ratings.answer_stray(interaction)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload)

    async def _reaction(self, payload: discord.RawReactionActionEvent) -> None:
        if self.user is not None:
            channel = self.get_channel(payload.channel_id)
            await self._adapter.messages.signals.reaction(payload, channel, self.user.id)


class ShardedSelftuneClient(SelftuneClient, discord.AutoShardedClient):
    """The same client as shards (``discord.shard_count``): one gateway connection per shard
    this process serves; discord.py routes each server to its shard's connection."""


def make_client(adapter: DiscordAdapter, settings: DiscordSettings) -> SelftuneClient:
    """The sharded client when sharding is configured, else the plain one."""
    if settings.sharded:
        return ShardedSelftuneClient(adapter, settings, **client_options(settings))
    return SelftuneClient(adapter, settings)


class DiscordAdapter:
    """selftune on Discord. It holds the chat core (composition); the client is its transport."""

    platform = PLATFORM

    def __init__(self, service: ChatCore, settings: DiscordSettings) -> None:
        if settings.token is None:
            raise ValueError("the Discord adapter needs a token (DISCORD_BOT_TOKEN)")
        self._token = settings.token  # a SecretStr: never in a log line or a repr
        self._settings = settings
        self.direct = DirectMessages()
        self.slash = SlashCommands(service, settings.admin_role_id, self.direct.remember)
        self.messages = MessageHandler(service, settings, self.direct.remember)
        self.ratings = RatingHandler(service, again=self.messages.again)
        self.ready = asyncio.Event()
        self.client: SelftuneClient | None = None
        self._service = service
        self._recovered = False  # on_ready comes again after each reconnect
        self._again: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Log in, connect and serve until cancelled; a fatal refusal becomes a clear error."""
        configure_endpoints(self._settings)
        client = self.client = make_client(self, self._settings)
        try:
            await client.start(self._token.get_secret_value())
        except discord.PrivilegedIntentsRequired:
            raise self._fail(NEEDS_MESSAGE_CONTENT) from None
        except discord.LoginFailure:
            raise self._fail(BAD_TOKEN) from None
        except discord.ConnectionClosed as exc:
            message = f"Discord closed the connection for good (code {exc.code}: {exc.reason})."
            raise self._fail(BAD_TOKEN if exc.code == 4004 else message) from None
        except (aiohttp.ClientError, OSError) as exc:
            where = self._settings.api_base
            raise self._fail(f"cannot reach Discord at {where} ({exc}).") from None
        finally:
            self.ready.clear()
            await self.messages.aclose()  # answers in flight get the shutdown grace
            await self._stop_tracked()
            await client.close()

    async def recover(self) -> None:
        """Once per process: answer the messages a crash interrupted (recorded, not done) that
        this process's shards receive; another process's are its own to answer."""
        client = self._connected()
        if self._recovered or client.user is None:
            return
        self._recovered = True
        me, deliveries = client.user, self._service.deliveries
        platform = delivery_platform(me)
        for key, place, _ref in await deliveries.unfinished(platform):
            guild = place.get("guild_id") or None
            if not receives(client, int(guild) if guild else None):
                continue  # another process's shard: that process answers it
            channel = client.get_partial_messageable(
                int(place["channel_id"]), guild_id=int(guild) if guild else None
            )
            try:
                message = await channel.fetch_message(int(key))
            except discord.HTTPException as exc:  # deleted meanwhile, or no longer visible
                log.info("message %s cannot be answered after the restart: %s", key, exc)
                await deliveries.finish(platform, key)
                continue
            self.track(self.messages.handle(message, me, again=True))

    def track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task that ends with the adapter (recovery, answers again)."""
        task = asyncio.create_task(work)
        self._again.add(task)
        task.add_done_callback(self._again.discard)

    async def _stop_tracked(self) -> None:
        for task in self._again:
            task.cancel()
        await asyncio.gather(*self._again, return_exceptions=True)

    @staticmethod
    def _fail(message: str) -> DiscordStartupError:
        log.error("%s", message)
        return DiscordStartupError(message)

    def _connected(self) -> SelftuneClient:
        client = self.client
        if client is None or not client.is_ready():
            raise RuntimeError("not connected to Discord")
        return client

    async def send(self, chat_key: str, text: str) -> None:
        """Post a message the core wants to say on its own (training progress)."""
        channel = self._connected().get_partial_messageable(target_channel_id(chat_key))
        await send_pieces(channel, text)

    async def send_private(self, user_key: str, text: str) -> None:
        """Write to a user privately (``discord:<user id>``): a DM, or where DMs are closed a
        note in the channel of their last command (the outbox's private sender)."""
        await self.direct.send(self._connected(), user_key, text)
