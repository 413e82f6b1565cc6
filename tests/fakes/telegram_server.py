"""A fake Telegram Bot API server on 127.0.0.1 for tests (and the bench).

The real python-telegram-bot client talks HTTP to it, so the adapter is tested through its real
wire format (see TESTING.md). It answers the methods a chat bot uses, keeps the bot's messages
(so edits that change nothing get Telegram's "message is not modified"), checks HTML the way
Telegram does (allowed tags, balance, entities, 4096 visible characters), records every call,
and can be told to fail calls (flood control's 429 with retry_after, a 400 of any text).

Updates are pushed by the test (``push_text``, ``push_callback``, ...) and handed out by
``getUpdates`` long polls, or POSTed to the bot's webhook once one is set, as Telegram does: a
chat's updates one after another (the next once the last got a 2xx), and an update answered with
an error status, or not answered, sent again after a pause (``webhook_retry_s``). ``Balancer``
is a tiny round-robin load balancer to put in front of several webhook servers.
Nothing here knows the adapter: any Bot API client can be tested against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

TOKEN = "123456789:TEST-fake-token-abcdefghijklmno"  # shaped like a real one: logs must mask it
BOT_ID = 4242
BOT_USERNAME = "selftune_bot"
BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "selftune", "username": BOT_USERNAME}
LIMIT = 4096

_JSON_FIELDS = {
    "reply_markup",
    "reply_parameters",
    "allowed_updates",
    "commands",
    "scope",
    "link_preview_options",
    "entities",
    "caption_entities",
}
_INT_FIELDS = {"chat_id", "message_id", "message_thread_id", "offset", "limit", "timeout"}
_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "span",
    "tg-spoiler",
    "tg-emoji",
    "blockquote",
}
_BAD_ENTITY = re.compile(r"&(?!(?:lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);)")
_BAD_LT = re.compile(r"<(?![a-zA-Z/])")


# Update kinds Telegram sends only to a bot that lists them in ``allowed_updates``.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})


def wanted(update: dict[str, Any], allowed: list[str] | None) -> bool:
    """Whether Telegram would send ``update`` to a bot that asked for ``allowed`` (None or
    empty: the default, every kind but the opt-in ones)."""
    kind = next(k for k in update if k != "update_id")
    return kind in allowed if allowed else kind not in OPT_IN_UPDATES


def utf16_len(text: str) -> int:
    # surrogatepass: a lone surrogate (a broken client's half emoji) is one UTF-16 unit too.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass
class Call:
    """One request the bot made: method, decoded parameters, when, and how it was answered."""

    method: str
    params: dict[str, Any]
    at: float  # time.monotonic()
    status: int = 200
    files: dict[str, bytes] = field(default_factory=dict)
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def text(self) -> str | None:
        value = self.params.get("text")
        return value if isinstance(value, str) else None

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return value if isinstance(value, int) else None

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """The inline buttons this call put on a message, in order."""
        markup = self.params.get("reply_markup")
        if not isinstance(markup, dict):
            return []
        return [button for row in markup.get("inline_keyboard", []) for button in row]

    @property
    def rated(self) -> bool:
        """Whether this call put 👍/👎 buttons on a message (a final reply)."""
        return any(str(b.get("callback_data", "")).startswith("rate:") for b in self.buttons)

    @property
    def exchange_id(self) -> int:
        """The exchange the 👍/👎 buttons of this call rate."""
        return int(str(self.buttons[0]["callback_data"]).split(":")[1])


@dataclass
class Fault:
    """An error to answer instead of running the method (``times`` times, when ``when``)."""

    method: str
    status: int
    description: str
    retry_after: int | None = None
    times: int = 1
    when: Callable[[Call], bool] | None = None


class ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after


class _HtmlCheck(HTMLParser):
    """Telegram's HTML rules: a few tags, properly nested; the visible text is collected."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.parts: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAGS:
            self.error = self.error or f'Unsupported start tag "{tag}"'
        if tag == "a" and not dict(attrs).get("href"):
            self.error = self.error or "Can't find href of a link"
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.error = self.error or f'Can\'t find end tag corresponding to start tag "{tag}"'
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def visible_text(text: str, parse_mode: str | None) -> str:
    """What the user would see, or ApiError as Telegram would answer."""
    if parse_mode and parse_mode.upper() == "HTML":
        check = _HtmlCheck()
        if _BAD_ENTITY.search(text) or _BAD_LT.search(text):
            check.error = "Unsupported HTML entity or unexpected '<'"
        check.feed(text)
        check.close()
        if check.stack and not check.error:
            check.error = f'Can\'t find end tag corresponding to start tag "{check.stack[-1]}"'
        if check.error:
            raise ApiError(400, f"Bad Request: can't parse entities: {check.error}")
        text = "".join(check.parts)
    elif parse_mode:
        raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode}")
    if not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if utf16_len(text) > LIMIT:
        raise ApiError(400, "Bad Request: message is too long")
    return text


def _entities(text: str) -> list[dict[str, Any]]:
    """bot_command and mention entities as Telegram adds them (offsets in UTF-16 units)."""
    found = []
    for match in re.finditer(r"(?<![\w/])/[a-zA-Z0-9_]+(?:@\w+)?|(?<!\w)@\w{3,}", text):
        kind = "bot_command" if match[0].startswith("/") else "mention"
        if kind == "bot_command" and match.start() != 0:
            continue
        offset = utf16_len(text[: match.start()])
        found.append({"type": kind, "offset": offset, "length": utf16_len(match[0])})
    return found


class FakeTelegram:
    """The server. ``async with FakeTelegram() as tg:`` then point the bot at ``tg.base_url``."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # the bot's, as sent/edited
        self.commands: dict[str, list[dict[str, Any]]] = {}  # scope (JSON) → commands
        self.webhook: dict[str, Any] | None = None
        self.webhook_statuses: list[int] = []  # every POST's answer (0: no answer)
        self.webhook_retry_s = 0.2  # pause before an update is POSTed again
        self._chat_turns: dict[int, asyncio.Lock] = {}  # a chat's POSTs in order, one at a time
        self.allowed_updates: list[str] | None = None  # as the bot last asked (getUpdates)
        self.pushed_at: dict[int, float] = {}  # update_id → time.monotonic()
        self._updates: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._recorded = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- server -------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()  # answer pending long polls now
        for task in self._deliveries:
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(ApiError(401, "Unauthorized"))
        method = request.match_info["method"]
        call = Call(method, {}, time.monotonic())
        await self._read_params(request, call)
        self.calls.append(call)
        try:
            self._fault(call)
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            call.result = await handler(call)
        except ApiError as exc:
            call.status = exc.status
            return _error(exc)
        finally:
            self._recorded.set()
        return web.json_response({"ok": True, "result": call.result})

    @staticmethod
    async def _read_params(request: web.Request, call: Call) -> None:
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                call.files[key] = value.file.read()
                continue
            text = value if isinstance(value, str) else bytes(value).decode()
            if key in _JSON_FIELDS:
                call.params[key] = json.loads(text)
            elif key in _INT_FIELDS and re.fullmatch(r"-?\d+", text):
                call.params[key] = int(text)
            else:
                call.params[key] = text

    def _fault(self, call: Call) -> None:
        for fault in self.faults:
            if fault.method == call.method and (fault.when is None or fault.when(call)):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                raise ApiError(fault.status, fault.description, fault.retry_after)

    # -- faults -------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        description: str,
        *,
        status: int = 400,
        times: int = 1,
        when: Callable[[Call], bool] | None = None,
    ) -> None:
        self.faults.append(Fault(method, status, description, None, times, when))

    def flood(
        self,
        method: str,
        retry_after: int = 1,
        *,
        times: int = 1,
        when: Callable[[Call], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` matching calls with 429 Too Many Requests."""
        description = f"Too Many Requests: retry after {retry_after}"
        self.faults.append(Fault(method, 429, description, retry_after, times, when))

    def refuse_formatting(self, method: str = "sendMessage", times: int = 1) -> None:
        """Answer formatted (parse_mode) calls with "can't parse entities"."""
        self.fail(
            method,
            "Bad Request: can't parse entities: Unsupported start tag at byte offset 0",
            times=times,
            when=lambda call: bool(call.params.get("parse_mode")),
        )

    # -- Bot API methods ----------------------------------------------------------------------

    async def _api_getMe(self, _call: Call) -> dict[str, Any]:
        return {**BOT_USER, "can_join_groups": True, "can_read_all_group_messages": False}

    async def _api_deleteWebhook(self, _call: Call) -> bool:
        self.webhook = None
        return True

    async def _api_setWebhook(self, call: Call) -> bool:
        self.webhook = dict(call.params)
        return True

    async def _api_setMyCommands(self, call: Call) -> bool:
        scope = json.dumps(call.params.get("scope", {"type": "default"}), sort_keys=True)
        self.commands[scope] = call.params["commands"]
        return True

    async def _api_sendChatAction(self, call: Call) -> bool:
        self._chat(call.params["chat_id"])
        return True

    async def _api_answerCallbackQuery(self, _call: Call) -> bool:
        return True

    async def _api_getUpdates(self, call: Call) -> list[dict[str, Any]]:
        offset, limit = call.params.get("offset", 0), call.params.get("limit", 100)
        deadline = time.monotonic() + float(call.params.get("timeout", 0))
        self.allowed_updates = call.params.get("allowed_updates")
        while not self._pending(offset) and not self._closing and time.monotonic() < deadline:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return self._updates[:limit]

    def _pending(self, offset: int) -> bool:
        """Drop the confirmed updates and those the bot did not ask for; any left?"""
        self._updates = [
            u for u in self._updates if u["update_id"] >= offset and wanted(u, self.allowed_updates)
        ]
        return bool(self._updates)

    async def _api_sendMessage(self, call: Call) -> dict[str, Any]:
        p = call.params
        text = visible_text(p["text"], p.get("parse_mode"))
        message = self._new_message(p["chat_id"], p.get("message_thread_id"), text=text)
        if "reply_markup" in p:
            message["reply_markup"] = p["reply_markup"]
        self.messages[(p["chat_id"], message["message_id"])] = message
        return message

    async def _api_editMessageText(self, call: Call) -> dict[str, Any]:
        p = call.params
        message = self._bot_message(p["chat_id"], p["message_id"])
        text = visible_text(p["text"], p.get("parse_mode"))
        return self._change(message, text, p.get("reply_markup"))

    async def _api_editMessageReplyMarkup(self, call: Call) -> dict[str, Any]:
        p = call.params
        message = self._bot_message(p["chat_id"], p["message_id"])
        return self._change(message, message["text"], p.get("reply_markup"))

    async def _api_deleteMessage(self, call: Call) -> bool:
        key = (call.params["chat_id"], call.params["message_id"])
        if self.messages.pop(key, None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    async def _api_sendPhoto(self, call: Call) -> dict[str, Any]:
        p = call.params
        if not call.files:
            raise ApiError(400, "Bad Request: there is no photo in the request")
        message = self._new_message(p["chat_id"], p.get("message_thread_id"))
        size = len(next(iter(call.files.values())))
        message["photo"] = [
            {
                "file_id": "p1",
                "file_unique_id": "u1",
                "width": 800,
                "height": 400,
                "file_size": size,
            }
        ]
        self.messages[(p["chat_id"], message["message_id"])] = message
        return message

    # -- message state ------------------------------------------------------------------------

    def _chat(self, chat_id: int) -> dict[str, Any]:
        chat = self._chats.get(chat_id)
        if chat is None:
            if chat_id > 0:
                raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def _new_message(
        self, chat_id: int, thread_id: int | None, sender: dict[str, Any] = BOT_USER, **extra: Any
    ) -> dict[str, Any]:
        chat = self._chat(chat_id)
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": chat,
            "from": sender,
            **extra,
        }
        if thread_id is not None and chat.get("is_forum"):
            message.update(message_thread_id=thread_id, is_topic_message=True)
        return message

    def _bot_message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        message = self.messages.get((chat_id, message_id))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        return message

    @staticmethod
    def _change(
        message: dict[str, Any], text: str, markup: dict[str, Any] | None
    ) -> dict[str, Any]:
        if message.get("text") == text and message.get("reply_markup") == markup:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        message["text"] = text
        if markup is None:
            message.pop("reply_markup", None)  # an edit without a keyboard removes it
        else:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return message

    # -- what the test sends ------------------------------------------------------------------

    @staticmethod
    def user(user_id: int, first_name: str = "Ann", username: str | None = None) -> dict[str, Any]:
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        return user

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        self._chats[user["id"]] = chat
        return chat

    def group(
        self, chat_id: int = -100123, title: str = "Group", *, forum: bool = False
    ) -> dict[str, Any]:
        chat: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": title}
        if forum:
            chat["is_forum"] = True
        self._chats[chat_id] = chat
        return chat

    def push(self, update: dict[str, Any]) -> int:
        """Queue an update (``update_id`` is added); delivered by long poll or webhook."""
        update_id = next(self._ids)
        update = {"update_id": update_id, **update}
        self.pushed_at[update_id] = time.monotonic()
        if self.webhook is not None:
            task = asyncio.get_running_loop().create_task(self._deliver(update))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        else:
            self._updates.append(update)
            self._wake.set()
        return update_id

    def message(
        self,
        chat: dict[str, Any],
        sender: dict[str, Any],
        text: str | None = None,
        *,
        reply_to: dict[str, Any] | None = None,
        thread_id: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A user's message (not pushed): text with Telegram's entities, or ``extra`` fields."""
        message = self._new_message(chat["id"], thread_id, sender, **extra)
        if text is not None:
            message["text"] = text
            if entities := _entities(text):
                message["entities"] = entities
        if thread_id is not None and chat.get("is_forum") and reply_to is None:
            # In a forum, a topic's messages reply to the topic's opening service message.
            reply_to = {
                "message_id": thread_id,
                "date": int(time.time()),
                "chat": chat,
                "from": sender,
                "forum_topic_created": {"name": "Topic", "icon_color": 7322096},
            }
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        return message

    def push_text(
        self, chat: dict[str, Any], sender: dict[str, Any], text: str, **options: Any
    ) -> dict[str, Any]:
        """Push a text message from ``sender`` in ``chat``; returns the message."""
        message = self.message(chat, sender, text, **options)
        self.push({"message": message})
        return message

    def push_callback(
        self,
        sender: dict[str, Any],
        message: dict[str, Any],
        data: str | None = None,
        *,
        inaccessible: bool = False,
    ) -> str:
        """Press a button under one of the bot's messages (the first one unless ``data``).
        ``inaccessible``: Telegram sends only the chat and id (``date`` 0) of old messages."""
        current = self.messages.get((message["chat"]["id"], message["message_id"]), message)
        if data is None:
            data = current["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        if inaccessible:
            current = {"chat": current["chat"], "message_id": current["message_id"], "date": 0}
        query_id = f"q{next(self._ids)}"
        query = {
            "id": query_id,
            "from": sender,
            "chat_instance": f"ci{current['chat']['id']}",
            "message": json.loads(json.dumps(current)),
            "data": data,
        }
        self.push({"callback_query": query})
        return query_id

    def push_reaction(
        self,
        sender: dict[str, Any],
        message: dict[str, Any],
        new: list[str],
        old: list[str] | None = None,
    ) -> int:
        """``sender`` changes their reactions on ``message`` from ``old`` to ``new`` emoji (a
        ``message_reaction`` update: Telegram sends the whole list before and after)."""

        def emoji(items: list[str] | None) -> list[dict[str, str]]:
            return [{"type": "emoji", "emoji": e} for e in items or []]

        reaction = {
            "chat": message["chat"],
            "message_id": message["message_id"],
            "user": sender,
            "date": int(time.time()),
            "old_reaction": emoji(old),
            "new_reaction": emoji(new),
        }
        return self.push({"message_reaction": reaction})

    async def _deliver(self, update: dict[str, Any]) -> None:
        """POST the update until a 2xx answers it, after the chat's earlier updates (locks
        are first come, first served: pushed in order, posted in order)."""
        turn = self._chat_turns.setdefault(_chat_of(update), asyncio.Lock())
        async with turn:
            for _attempt in itertools.count():
                if await self._post_once(update):
                    return
                await asyncio.sleep(self.webhook_retry_s)  # as Telegram: later, again

    async def _post_once(self, update: dict[str, Any]) -> bool:
        assert self.webhook is not None
        if not wanted(update, self.webhook.get("allowed_updates")):
            return True  # never sent, as Telegram: the bot did not ask for this kind
        if self._client is None:
            self._client = ClientSession()
        headers = {}
        if secret := self.webhook.get("secret_token"):
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        try:
            async with self._client.post(
                self.webhook["url"], json=update, headers=headers, timeout=ClientTimeout(total=30)
            ) as answer:
                self.webhook_statuses.append(answer.status)
                return 200 <= answer.status < 300
        except (ClientError, TimeoutError):
            self.webhook_statuses.append(0)
            return False

    # -- what the test checks -----------------------------------------------------------------

    def calls_to(self, method: str, *, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (chat_id is None or c.chat_id == chat_id)
        ]

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a chat as they are now, oldest first."""
        return [m for (chat, _), m in sorted(self.messages.items()) if chat == chat_id]

    def finals(self, chat_id: int | None = None) -> list[Call]:
        """Successful calls that put 👍/👎 on a reply: one per final reply."""
        return [
            c
            for c in self.calls
            if c.ok
            and c.method in ("sendMessage", "editMessageText")
            and c.rated
            and (chat_id is None or c.chat_id == chat_id)
        ]

    async def reply(self, chat_id: int, *, start: int = 0, rated: bool = True) -> Call:
        """The call that completed a reply in ``chat_id`` after call index ``start``: the one
        with 👍/👎, or (``rated=False``, commands and notices) the first message sent."""
        if rated:
            return await self.wait_for(
                lambda c: c.ok and c.rated and c.chat_id == chat_id, start=start
            )
        return await self.wait_for(
            lambda c: c.ok and c.method == "sendMessage" and c.chat_id == chat_id, start=start
        )

    async def wait_for(
        self, predicate: Callable[[Call], bool], *, within: float = 10.0, start: int = 0
    ) -> Call:
        """The first call (from index ``start``) matching ``predicate``, waiting for it up to
        ``within`` seconds (TimeoutError then, listing the last calls)."""
        deadline = time.monotonic() + within
        while True:
            for call in self.calls[start:]:
                if predicate(call):
                    return call
            await self._next_call(deadline, "a call matching the predicate")

    async def wait_until(self, condition: Callable[[], bool], *, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            await self._next_call(deadline, "the condition")

    async def _next_call(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            seen = ", ".join(f"{c.method}:{c.status}" for c in self.calls[-12:])
            raise TimeoutError(f"waited in vain for {what}; last calls: {seen}")
        self._recorded.clear()
        # Look again at least every 50 ms: a condition may change without a call (a DB write).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._recorded.wait(), min(left, 0.05))


def _chat_of(update: dict[str, Any]) -> int:
    """The chat an update belongs to (0: none)."""
    message = update.get("message") or update.get("edited_message")
    if message is None and "callback_query" in update:
        message = update["callback_query"].get("message")
    return int(message["chat"]["id"]) if message else 0


class Balancer:
    """A round-robin HTTP load balancer: each request goes to the next backend; one that
    does not answer (refused, reset) is skipped and the request tried on the next one, and
    502 when none answers. ``async with Balancer([url, ...]) as lb``: ``lb.url``."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.forwarded: list[tuple[str, int]] = []  # (backend, status) of every answer
        self._next = itertools.count()
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Balancer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self._client = ClientSession()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._client is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        for _ in range(len(self.backends)):
            backend = self.backends[next(self._next) % len(self.backends)]
            try:
                async with self._client.request(
                    request.method, backend + request.path_qs, data=body, headers=headers
                ) as answer:
                    payload = await answer.read()
            except ClientError:
                continue  # that backend is down: the next one
            self.forwarded.append((backend, answer.status))
            return web.Response(status=answer.status, body=payload)
        return web.Response(status=502)


def _error(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": exc.status, "description": exc.description}
    if exc.retry_after is not None:
        body["parameters"] = {"retry_after": exc.retry_after}
    return web.json_response(body, status=exc.status)


# -- running a bot against the fake -------------------------------------------------------------


def bot_settings(fake: FakeTelegram, **overrides: Any) -> Any:
    """TelegramSettings that point the bot at ``fake`` (no waiting between edits by default)."""
    from bot.settings import TelegramSettings

    values: dict[str, Any] = {
        "token": fake.token,
        "base_url": fake.base_url,
        "base_file_url": fake.base_file_url,
        "edit_interval_s": 0.0,
        "max_requests_per_second": 0,
        "max_requests_per_minute_per_group": 0,
        **overrides,
    }
    return TelegramSettings.model_validate(values)
