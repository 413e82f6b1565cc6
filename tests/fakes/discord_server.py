"""A fake Discord for the real discord.py client: REST + gateway on 127.0.0.1 (aiohttp).

It plays one world: a guild with a text channel, a second channel and a thread (more guilds
with ``add_guild``); users Alice, Bob and Root (who holds the admin role); DM channels made on
demand. Tests push gateway events (a user's message, a button press, a slash command) and read
what the bot did over REST.

Sharding as Discord does it: IDENTIFY may carry ``shard: [id, count]``; a guild's events go only
to the sessions of shard ``(guild_id >> 22) % count``, direct messages only to shard 0;
``GET /gateway/bot`` recommends ``recommended_shards``. ``api_base_for(tag)`` gives one bot
process its own REST base, so a test can tell which process made a call (``Call.via``).

Facts it honours (see /work/shared/TESTING.md): REST answers carry ``Content-Type:
application/json`` exactly; interaction callbacks answer JSON; never a 5xx (discord.py would
retry for ~25 s); the bot's own messages come back through the gateway; a privileged intent the
application lacks closes the gateway with 4014; more than 5 edits in 5 s in one channel get a 429.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import WSMsgType, web

from bot.settings import Settings, load_settings
from tests.fakes.common import running

if TYPE_CHECKING:
    from adapters.discord.adapter import DiscordAdapter
    from bot.chat.service import ChatService

TOKEN = "fake-discord-token.abc.xyz"
API = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000
MESSAGE_CONTENT_INTENT = 1 << 15
EPHEMERAL = 1 << 6

Json = dict[str, Any]
T = TypeVar("T")
Handler = Callable[[web.Request, list[str], Any, list[tuple[str, bytes]]], Awaitable[web.Response]]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json(
    data: object, status: int = 200, *, headers: dict[str, str] | None = None
) -> web.Response:
    # Exactly "application/json": discord.py compares the header, and aiohttp's json_response
    # would add "; charset=utf-8".
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


@dataclass(frozen=True)
class FakeUser:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> Json:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name.title(),
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
        }


@dataclass
class Call:
    """One REST request the bot made."""

    method: str
    path: str
    body: Json
    at: float
    files: list[tuple[str, bytes]] = field(default_factory=list)
    via: str = ""  # the tag of the REST base it came through (``api_base_for``)


@dataclass
class GatewaySession:
    """One identified gateway connection, and the shard it asked for."""

    ws: web.WebSocketResponse
    seq: itertools.count[int]
    shard: tuple[int, int]  # (id, count); (0, 1) when IDENTIFY named none

    def receives(self, guild_id: int | None) -> bool:
        """Discord's rule: a guild's events to its shard, direct messages to shard 0."""
        shard_id, count = self.shard
        return shard_id == (0 if guild_id is None else (guild_id >> 22) % count)


@dataclass
class FakeInteraction:
    """An interaction the test pushed, and everything the bot answered to it."""

    id: int
    token: str
    channel_id: int
    created: float
    message_id: int | None = None  # the message a pressed button is on
    callbacks: list[Json] = field(default_factory=list)
    acked_at: float | None = None
    original_id: int | None = None  # the deferred "thinking" message
    loading: bool = False
    followups: list[int] = field(default_factory=list)


class FakeDiscord:
    """The fake server. ``async with FakeDiscord() as fake:`` starts it on a free port."""

    def __init__(self, *, allow_message_content: bool = True, token: str = TOKEN) -> None:
        self.allow_message_content = allow_message_content
        self.token = token
        self._ids = itertools.count(1)
        self.application_id = self.new_id()
        self.bot = FakeUser(self.application_id, "selftune", bot=True)
        self.alice = FakeUser(self.new_id(), "alice")
        self.bob = FakeUser(self.new_id(), "bob")
        self.root = FakeUser(self.new_id(), "root")  # holds the admin role
        self.ada = FakeUser(self.new_id(), "ada")  # an admin by user key (see discord_settings)
        self.other_bot = FakeUser(self.new_id(), "otherbot", bot=True)
        self.guild_id = self.new_id()
        self.admin_role_id = self.new_id()
        self.bot_role_id = self.new_id()
        self.channel_id = self.new_id()
        self.other_channel_id = self.new_id()
        self.thread_id = self.new_id()
        # Guild channel -> its guild; the thread is in the first guild, under `channel_id`.
        self._guild_channels = dict.fromkeys(
            (self.channel_id, self.other_channel_id, self.thread_id), self.guild_id
        )
        self.guild_ids = [self.guild_id]
        self._records()

    def _records(self) -> None:
        """What the bot did and what the gateway saw, for the tests to read."""
        self.recommended_shards = 1  # what GET /gateway/bot says
        self.identify_shards: list[tuple[int, int]] = []
        self.posted_via: dict[int, str] = {}  # the bot's message id -> tag of the REST base
        self._dms: dict[int, int] = {}  # user id -> DM channel id
        self.dms_closed: set[int] = set()  # users who refuse DMs from server members (403)
        self.messages: dict[int, Json] = {}
        self.calls: list[Call] = []
        self.interactions: dict[int, FakeInteraction] = {}
        self.commands: list[Json] = []
        self.identify_intents: list[int] = []
        self.rate_limited = 0
        # Seconds an edit takes to reach the server (the n-th edit's, from 0): network delay,
        # so a test controls it rather than the machine's load.
        self.edit_latency: Callable[[int], float] = lambda _n: 0.0
        self.refuse_edits = 0  # the next n edits get a 429 (retry_after 0.05 s), window or not
        self._edits: dict[int, list[float]] = {}
        self._sockets: list[GatewaySession] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API + "/{path:.*}", self._rest)
        app.router.add_route("*", "/{via}" + API + "/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *_: object) -> None:
        for session in list(self._sockets):
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    def api_base_for(self, via: str) -> str:
        """The REST base under another path: the calls made through it have ``via`` set."""
        return f"http://127.0.0.1:{self.port}/{via}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def new_id(self) -> int:
        """A snowflake: milliseconds since Discord's epoch, shifted, plus a counter."""
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | next(self._ids)

    # -- the world ----------------------------------------------------------------------------

    def add_guild(self, shard: tuple[int, int] = (0, 1)) -> tuple[int, int]:
        """Another guild with one text channel, on ``shard`` (id, count): (guild, channel)."""
        shard_id, count = shard
        guild_id = self.new_id()
        # Move the timestamp part (the bits above 22) to the wanted shard, a few ms back.
        guild_id -= (((guild_id >> 22) - shard_id) % count) << 22
        channel_id = self.new_id()
        self.guild_ids.append(guild_id)
        self._guild_channels[channel_id] = guild_id
        return guild_id, channel_id

    def add_channel(self, guild_id: int) -> int:
        """Another text channel in ``guild_id`` (before the bot connects: GUILD_CREATE lists it)."""
        channel_id = self.new_id()
        self._guild_channels[channel_id] = guild_id
        return channel_id

    def guild_of(self, channel_id: int) -> int | None:
        """The guild a channel is in; ``None`` for a DM channel."""
        return self._guild_channels.get(channel_id)

    def dm_channel(self, user: FakeUser) -> int:
        if user.id not in self._dms:
            self._dms[user.id] = self.new_id()
        return self._dms[user.id]

    def _member(self, user: FakeUser) -> Json:
        roles = [str(self.admin_role_id)] if user is self.root else []
        if user is self.bot:
            roles = [str(self.bot_role_id)]
        return {"user": user.payload(), "roles": roles, "joined_at": _now(), "flags": 0}

    def _text_channel(self, channel_id: int, name: str) -> Json:
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(self._guild_channels[channel_id]),
            "name": name,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "last_message_id": None,
        }

    def _thread(self) -> Json:
        return {
            "id": str(self.thread_id),
            "type": 11,
            "guild_id": str(self.guild_id),
            "parent_id": str(self.channel_id),
            "owner_id": str(self.alice.id),
            "name": "a thread",
            "message_count": 0,
            "member_count": 2,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _now(),
                "locked": False,
            },
        }

    def _role(self, role_id: int, name: str, **extra: Any) -> Json:
        return {"id": str(role_id), "name": name, "permissions": "0", "position": 0, **extra}

    def _guild(self, guild_id: int) -> Json:
        users = (self.bot, self.alice, self.bob, self.root, self.ada, self.other_bot)
        first = guild_id == self.guild_id
        names = {self.channel_id: "general", self.other_channel_id: "random"}
        channels = [c for c, g in self._guild_channels.items() if g == guild_id]
        roles = [
            self._role(guild_id, "@everyone"),
            self._role(self.admin_role_id, "bot admins"),
            self._role(
                self.bot_role_id, "selftune", managed=True, tags={"bot_id": str(self.bot.id)}
            ),
        ]
        return {
            "id": str(guild_id),
            "name": "Test Server" if first else f"Server {len(self.guild_ids)}",
            "owner_id": str(self.root.id),
            "member_count": len(users),
            "large": False,
            "unavailable": False,
            "joined_at": _now(),
            "roles": roles,
            "emojis": [],
            "stickers": [],
            "features": [],
            "channels": [
                self._text_channel(c, names.get(c, "general"))
                for c in channels
                if c != self.thread_id
            ],
            "threads": [self._thread()] if first else [],
            "members": [self._member(u) for u in users],
            "voice_states": [],
            "presences": [],
        }

    def _channel_payload(self, channel_id: int, user: FakeUser) -> Json:
        if channel_id == self.thread_id:
            return self._thread()
        if channel_id in self._guild_channels:
            return self._text_channel(channel_id, "general")
        return {"id": str(channel_id), "type": 1, "recipients": [user.payload()]}

    # -- messages -----------------------------------------------------------------------------

    def _message(self, channel_id: int, author: FakeUser, content: str, **extra: Any) -> Json:
        message: Json = {
            "id": str(self.new_id()),
            "channel_id": str(channel_id),
            "author": author.payload(),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if channel_id in self._guild_channels:
            message["guild_id"] = str(self._guild_channels[channel_id])
            message["member"] = {k: v for k, v in self._member(author).items() if k != "user"}
        message.update(extra)
        self.messages[int(message["id"])] = message
        return message

    async def user_says(
        self,
        user: FakeUser,
        content: str,
        *,
        channel_id: int | None = None,
        mention_bot: bool = False,
        reply_to: Json | None = None,
        **extra: Any,
    ) -> Json:
        """A user posts a message (in their DM with the bot unless ``channel_id`` is given)."""
        message = self.compose(user, content, channel_id, mention_bot, reply_to, **extra)
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    def compose(
        self,
        user: FakeUser,
        content: str,
        channel_id: int | None = None,
        mention_bot: bool = False,
        reply_to: Json | None = None,
        **extra: Any,
    ) -> Json:
        """A user's message, stored but not dispatched (its event lost, say): ``user_says``."""
        channel = channel_id if channel_id is not None else self.dm_channel(user)
        if mention_bot:
            content = f"<@{self.bot.id}> {content}"
            extra["mentions"] = [self.bot.payload()]
        if reply_to is not None:
            extra["type"] = 19
            extra["message_reference"] = {
                "type": 0,
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
            }
            extra["referenced_message"] = reply_to
        return self._message(channel, user, content, **extra)

    async def user_edits(self, message: Json, content: str) -> Json:
        """The author edits one of their messages: Discord dispatches MESSAGE_UPDATE."""
        message.update(content=content, edited_timestamp=_now())
        await self.dispatch("MESSAGE_UPDATE", message)
        return message

    async def react(
        self, user: FakeUser, message: Json, emoji: str, *, remove: bool = False
    ) -> None:
        """A user adds (or removes) a reaction with a standard ``emoji`` on ``message``:
        Discord dispatches MESSAGE_REACTION_ADD (or _REMOVE)."""
        data: Json = {
            "user_id": str(user.id),
            "channel_id": message["channel_id"],
            "message_id": message["id"],
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if "guild_id" in message:
            data["guild_id"] = message["guild_id"]
            if not remove:
                data["member"] = self._member(user)
        await self.dispatch("MESSAGE_REACTION_REMOVE" if remove else "MESSAGE_REACTION_ADD", data)

    def plant_bot_message(self, channel_id: int, content: str, custom_ids: list[str]) -> Json:
        """A message shown as the bot's, carrying buttons with any ids: a stale or forged
        button that a press can then carry back (nothing is dispatched)."""
        buttons = [{"type": 2, "style": 2, "label": "?", "custom_id": c} for c in custom_ids]
        components = [{"type": 1, "components": buttons}]
        return self._message(channel_id, self.bot, content, components=components)

    def bot_messages(self, channel_id: int, *, ephemeral: bool = False) -> list[Json]:
        """The bot's messages in a channel, oldest first (ephemeral ones only when asked)."""
        return [
            m
            for m in self.messages.values()
            if int(m["channel_id"]) == channel_id
            and m["author"]["id"] == str(self.bot.id)
            and bool(m["flags"] & EPHEMERAL) == ephemeral
        ]

    @staticmethod
    def buttons(message: Json) -> list[tuple[str, str]]:
        """(label, custom_id) of every button on a message."""
        return [
            (button.get("label", ""), button.get("custom_id", ""))
            for row in message.get("components", [])
            for button in row.get("components", [])
        ]

    # -- interactions -------------------------------------------------------------------------

    def _interaction(
        self, kind: int, user: FakeUser, channel_id: int
    ) -> tuple[Json, FakeInteraction]:
        record = FakeInteraction(
            self.new_id(), f"tok-{self.new_id()}", channel_id, time.monotonic()
        )
        self.interactions[record.id] = record
        payload: Json = {
            "id": str(record.id),
            "application_id": str(self.application_id),
            "type": kind,
            "token": record.token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": self._channel_payload(channel_id, user),
            "locale": "en-US",
            "app_permissions": "0",
            "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [],
            "authorizing_integration_owners": {},
        }
        if channel_id in self._guild_channels:
            payload["guild_id"] = str(self._guild_channels[channel_id])
            payload["member"] = {**self._member(user), "permissions": "0"}
            payload["context"] = 0
        else:
            payload["user"] = user.payload()
            payload["context"] = 1
        return payload, record

    async def click(
        self, message: Json, custom_id: str, user: FakeUser, *, channel_id: int | None = None
    ) -> FakeInteraction:
        """A user presses a button with ``custom_id`` on ``message`` (as the fake stores it)."""
        channel = channel_id if channel_id is not None else int(message["channel_id"])
        payload, record = self._interaction(3, user, channel)
        record.message_id = int(message["id"])
        payload["message"] = self.messages.get(int(message["id"]), message)
        payload["data"] = {"custom_id": custom_id, "component_type": 2}
        await self.dispatch("INTERACTION_CREATE", payload)
        return record

    async def slash(
        self, name: str, user: FakeUser, channel_id: int, **options: str
    ) -> FakeInteraction:
        """A user runs ``/name option:value`` in a channel."""
        payload, record = self._interaction(2, user, channel_id)
        command = next((c for c in self.commands if c["name"] == name), {"id": "0"})
        payload["data"] = {
            "id": command["id"],
            "name": name,
            "type": 1,
            "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()],
        }
        await self.dispatch("INTERACTION_CREATE", payload)
        return record

    async def interact(
        self, kind: int, user: FakeUser, channel_id: int, data: Json
    ) -> FakeInteraction:
        """Any interaction (``kind``: 4 autocomplete, 5 a modal submitted, ...) with ``data``."""
        payload, record = self._interaction(kind, user, channel_id)
        payload["data"] = data
        await self.dispatch("INTERACTION_CREATE", payload)
        return record

    def answers(self, record: FakeInteraction) -> list[Json]:
        """What the user sees from an interaction: the original response, then follow-ups."""
        ids = ([record.original_id] if record.original_id else []) + record.followups
        return [self.messages[i] for i in ids if i in self.messages]

    # -- waiting ------------------------------------------------------------------------------

    async def wait_for(self, check: Callable[[], T], within_s: float = 5.0) -> T:
        """Poll ``check`` until it returns something truthy; fail after ``within_s`` seconds."""
        deadline = time.monotonic() + within_s
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within_s} s waiting for {check}")
            await asyncio.sleep(0.01)

    async def wait_answered(self, record: FakeInteraction, count: int = 1) -> list[Json]:
        """Wait until an interaction has ``count`` visible answers with content or files."""

        def done() -> list[Json]:
            shown = [m for m in self.answers(record) if not m.get("loading")]
            return shown if len(shown) >= count else []

        return await self.wait_for(done)

    # -- gateway ------------------------------------------------------------------------------

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a DISPATCH to every identified gateway connection of the event's shard."""
        guild = data.get("guild_id")
        for session in list(self._sockets):
            if not session.ws.closed and session.receives(int(guild) if guild else None):
                frame = {"op": 0, "t": event, "s": next(session.seq), "d": data}
                await session.ws.send_str(json.dumps(frame))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        seq = itertools.count(1)
        try:
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                await self._on_op(ws, seq, json.loads(frame.data))
        finally:
            self._sockets = [s for s in self._sockets if s.ws is not ws]
        return ws

    async def _on_op(self, ws: web.WebSocketResponse, seq: itertools.count[int], msg: Json) -> None:
        op = msg.get("op")
        if op == 1:
            # ACK a moment later, as a distant server would: discord.py notes the heartbeat's
            # send time only after handing it to the loop, and an instant ACK from 127.0.0.1
            # can beat that note ("Can't keep up ... 41 s behind", a false alarm).
            await asyncio.sleep(0.05)
            await ws.send_str(json.dumps({"op": 11}))
        elif op == 2:
            intents = int(msg["d"].get("intents", 0))
            self.identify_intents.append(intents)
            if intents & MESSAGE_CONTENT_INTENT and not self.allow_message_content:
                await ws.close(code=4014, message=b"Disallowed intent(s).")
                return
            shard_id, count = msg["d"].get("shard") or (0, 1)
            if not 0 <= shard_id < count:
                await ws.close(code=4010, message=b"Invalid shard.")
                return
            self.identify_shards.append((shard_id, count))
            await self._ready(GatewaySession(ws, seq, (shard_id, count)))

    async def _ready(self, session: GatewaySession) -> None:
        guilds = [g for g in self.guild_ids if session.receives(g)]
        ready = {
            "v": 10,
            "user": self.bot.payload(),
            "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
            "session_id": f"session-{self.new_id()}",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 1 << 19},
            "private_channels": [],
            "shard": list(session.shard),
        }
        events = [("READY", ready)] + [("GUILD_CREATE", self._guild(g)) for g in guilds]
        for event, data in events:
            frame = {"op": 0, "t": event, "s": next(session.seq), "d": data}
            await session.ws.send_str(json.dumps(frame))
        self._sockets.append(session)

    # -- REST ---------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        body, files = await _read_body(request)
        path, via = request.match_info["path"], request.match_info.get("via", "")
        self.calls.append(Call(request.method, path, body, time.monotonic(), files, via))
        parts = path.split("/")
        if parts[0] not in ("webhooks", "interactions") and (
            request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        for route, handler in self._routes():
            if _matches(route, request.method, parts):
                return await handler(request, parts, body, files)
        return _json({"message": f"404: no fake for {request.method} {path}", "code": 0}, 404)

    def _routes(self) -> list[tuple[str, Handler]]:
        return [
            ("GET users @me", self._me),
            ("GET gateway bot", self._gateway_bot),
            ("GET oauth2 applications @me", self._app_info),
            ("PUT applications * commands", self._sync_commands),
            ("POST users @me channels", self._create_dm),
            ("POST channels * typing", self._typing),
            ("POST channels * messages", self._post_message),
            ("GET channels * messages *", self._get_message),
            ("PATCH channels * messages *", self._edit_message),
            ("DELETE channels * messages *", self._delete_message),
            ("POST interactions * * callback", self._callback),
            ("POST webhooks * *", self._followup),
            ("PATCH webhooks * * messages *", self._edit_webhook_message),
            ("DELETE webhooks * * messages *", self._delete_webhook_message),
        ]

    async def _me(self, *_: Any) -> web.Response:
        return _json(self.bot.payload())

    async def _gateway_bot(self, *_: Any) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return _json(
            {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": limit,
            }
        )

    async def _app_info(self, *_: Any) -> web.Response:
        return _json(
            {
                "id": str(self.application_id),
                "name": "selftune",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.root.payload(),
                "verify_key": "0" * 64,
                "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED
            }
        )

    async def _sync_commands(
        self, _r: web.Request, _p: list[str], body: Any, _f: Any
    ) -> web.Response:
        commands = body if isinstance(body, list) else []
        self.commands = [
            {
                **c,
                "id": str(self.new_id()),
                "application_id": str(self.application_id),
                "version": "1",
            }
            for c in commands
        ]
        return _json(self.commands)

    async def _create_dm(self, _r: web.Request, _p: list[str], body: Json, _f: Any) -> web.Response:
        user_id = int(body["recipient_id"])
        known = (self.alice, self.bob, self.root, self.ada)
        user = next((u for u in known if u.id == user_id), None)
        if user is None:  # never a 5xx: discord.py would retry for ~25 s
            return _json({"message": "Invalid Recipient(s)", "code": 50033}, 400)
        return _json(self._channel_payload(self.dm_channel(user), user))

    async def _typing(self, *_: Any) -> web.Response:
        return web.Response(status=204)

    async def _post_message(
        self, request: web.Request, parts: list[str], body: Json, files: Any
    ) -> web.Response:
        if any(self._dms.get(user_id) == int(parts[1]) for user_id in self.dms_closed):
            # As Discord answers when the user does not accept DMs from server members.
            return _json({"message": "Cannot send messages to this user", "code": 50007}, 403)
        extra: Json = {"components": body.get("components", [])}
        if body.get("message_reference"):
            extra["type"] = 19
            extra["message_reference"] = body["message_reference"]
        extra["attachments"] = _attachments(files)
        message = self._message(int(parts[1]), self.bot, body.get("content") or "", **extra)
        self.posted_via[int(message["id"])] = request.match_info.get("via", "")
        await self.dispatch("MESSAGE_CREATE", message)  # as Discord does: the bot sees its own
        return _json(message)

    async def _get_message(self, _r: web.Request, parts: list[str], *_: Any) -> web.Response:
        found = self.messages.get(int(parts[3]))
        if found is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        return _json(found)

    async def _edit_message(
        self, _r: web.Request, parts: list[str], body: Json, _f: Any
    ) -> web.Response:
        channel_id = int(parts[1])
        await asyncio.sleep(self.edit_latency(sum(c.method == "PATCH" for c in self.calls) - 1))
        recent = [t for t in self._edits.get(channel_id, []) if time.monotonic() - t < 5.0]
        if len(recent) >= 5 or self.refuse_edits:
            self.refuse_edits = max(0, self.refuse_edits - 1)
            retry = 5.0 - (time.monotonic() - recent[0]) if len(recent) >= 5 else 0.05
            return self._rate_limited(retry)
        self._edits[channel_id] = [*recent, time.monotonic()]
        return _json(self._apply_edit(int(parts[3]), body))

    def _rate_limited(self, retry: float) -> web.Response:
        self.rate_limited += 1
        # Discord's answers come through Google's proxy, with a Via header; discord.py retries
        # a 429 only then (without it, it takes the 429 for a Cloudflare ban). Retry-After is
        # in whole seconds, the body's retry_after exact.
        return _json(
            {"message": "You are being rate limited.", "retry_after": retry, "global": False},
            429,
            headers={"Via": "1.1 google", "Retry-After": str(math.ceil(retry))},
        )

    def _apply_edit(self, message_id: int, body: Json) -> Json:
        message = self.messages[message_id]
        for key in ("content", "components", "flags"):
            if key in body and body[key] is not None:
                message[key] = body[key]
        message["edited_timestamp"] = _now()
        return message

    async def _delete_message(self, _r: web.Request, parts: list[str], *_: Any) -> web.Response:
        self.messages.pop(int(parts[3]), None)
        return web.Response(status=204)

    async def _callback(
        self, _r: web.Request, parts: list[str], body: Json, _f: Any
    ) -> web.Response:
        record = self.interactions[int(parts[1])]
        record.callbacks.append(body)
        record.acked_at = time.monotonic()
        kind, data = body["type"], body.get("data") or {}
        flags = int(data.get("flags") or 0)
        if kind in (4, 5):  # a message now, or a "thinking…" placeholder to fill later
            message = self._message(
                record.channel_id, self.bot, data.get("content") or "", flags=flags
            )
            message["loading"] = kind == 5
            record.original_id, record.loading = int(message["id"]), kind == 5
        elif kind == 7 and record.message_id is not None:
            self._apply_edit(record.message_id, data)
        interaction = {
            "id": str(record.id),
            "type": 2,
            "response_message_loading": kind == 5,
            "response_message_ephemeral": bool(flags & EPHEMERAL),
        }
        return _json({"interaction": interaction})

    def _record(self, token: str) -> FakeInteraction:
        return next(r for r in self.interactions.values() if r.token == token)

    async def _followup(
        self, _r: web.Request, parts: list[str], body: Json, files: Any
    ) -> web.Response:
        record = self._record(parts[2])
        content, attachments = body.get("content") or "", _attachments(files)
        if record.loading and record.original_id in self.messages:
            # The first follow-up after a "thinking" defer replaces the placeholder.
            record.loading = False
            message = self.messages[record.original_id]
            message.update(content=content, attachments=attachments, loading=False)
            return _json(message)
        flags = int(body.get("flags") or 0)
        message = self._message(
            record.channel_id, self.bot, content, flags=flags, attachments=attachments
        )
        record.followups.append(int(message["id"]))
        return _json(message)

    def _target(self, record: FakeInteraction, which: str) -> int | None:
        if which != "@original":
            return int(which)
        return record.message_id if record.message_id is not None else record.original_id

    async def _edit_webhook_message(
        self, _r: web.Request, parts: list[str], body: Json, _f: Any
    ) -> web.Response:
        record = self._record(parts[2])
        target = self._target(record, parts[4])
        if target is None or target not in self.messages:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        return _json(self._apply_edit(target, body))

    async def _delete_webhook_message(
        self, _r: web.Request, parts: list[str], *_: Any
    ) -> web.Response:
        record = self._record(parts[2])
        target = self._target(record, parts[4])
        if target is not None:
            self.messages.pop(target, None)
        if target == record.original_id:
            record.original_id, record.loading = None, False
        return web.Response(status=204)


def _matches(route: str, method: str, parts: list[str]) -> bool:
    want_method, *want = route.split()
    return (
        want_method == method
        and len(want) == len(parts)
        and all(w in ("*", p) for w, p in zip(want, parts, strict=True))
    )


def _attachments(files: list[tuple[str, bytes]]) -> list[Json]:
    return [
        {
            "id": str(i + 1),
            "filename": name,
            "size": len(data),
            "url": f"https://cdn.invalid/{name}",
            "proxy_url": f"https://cdn.invalid/{name}",
        }
        for i, (name, data) in enumerate(files)
    ]


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
    """JSON, or multipart (``payload_json`` plus ``files[n]``) when the bot uploads a file."""
    if request.content_type == "application/json":
        return await request.json(), []
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        files = [
            (part.filename, part.file.read())
            for key, part in form.items()
            if key.startswith("files[") and isinstance(part, web.FileField)
        ]
        raw = form.get("payload_json")
        return (json.loads(raw) if isinstance(raw, str) else {}), files
    return {}, []


def discord_settings(data_dir: Path, fake: FakeDiscord, **env: str) -> Settings:
    """Settings for a bot on ``fake``, through the real config path (environment variables):
    Ada is an admin by user key, Root by the admin role; start-up waits only briefly."""
    environ = {
        "SELFTUNE_DATA_DIR": str(data_dir),
        "DISCORD_BOT_TOKEN": fake.token,
        "SELFTUNE_DISCORD__API_BASE": fake.api_base,
        "SELFTUNE_DISCORD__GATEWAY_URL": fake.gateway_url,
        "SELFTUNE_DISCORD__GUILD_READY_TIMEOUT_S": "0.05",
        "SELFTUNE_DISCORD__ADMIN_ROLE_ID": str(fake.admin_role_id),
        "SELFTUNE_ADMINS": json.dumps([f"discord:{fake.ada.id}"]),
        **env,
    }
    settings, _ = load_settings(None, environ)
    return settings


@asynccontextmanager
async def run_bot(
    service: ChatService,
    settings: Settings,
    fake: FakeDiscord,
    adapter: DiscordAdapter | None = None,
) -> AsyncIterator[DiscordAdapter]:
    """Run the real Discord adapter (``adapter``, say one from ``make_adapters``, else a new
    one) against ``fake`` until the block ends; ready on entry."""
    from adapters.discord.adapter import DiscordAdapter

    adapter = adapter if adapter is not None else DiscordAdapter(service, settings.discord)
    async with running(adapter, within=5.0, name="discord-under-test"):
        yield adapter
