"""A corpus of bad inputs (tests/e2e/bad_inputs.py) against the console, the fake Telegram and
the fake Discord, through the real adapters and core: every input gets a clear reply or a
deliberate silence, every message is stored, and nothing is logged as an error. Each test
prints its counts (run with ``-s`` to see them)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.console import ConsoleAdapter
from adapters.telegram.adapter import TelegramAdapter
from bot.app import Core, build_core
from bot.generation import ScriptedGenerator
from bot.settings import Settings, load_settings
from tests.e2e.bad_inputs import NAMED_TEXT, NAMES, TEXTS, Tally, named, stored_text
from tests.fakes.common import running
from tests.fakes.discord_server import FakeDiscord, FakeUser, discord_settings, run_bot
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram, bot_settings

pytestmark = pytest.mark.filterwarnings("ignore:.*`retry_after`:DeprecationWarning")

UNLIMITED = {"SELFTUNE_CHAT__USER_MESSAGES_PER_MINUTE": "0"}


async def _core(settings: Settings) -> Core:
    return await build_core(settings, generator=ScriptedGenerator(), progress=False)


async def _settle(count: Callable[[], int], quiet_s: float = 0.6, within_s: float = 60.0) -> None:
    """Wait until ``count`` (calls made so far) stops growing for ``quiet_s`` seconds."""
    deadline = time.monotonic() + within_s
    seen, since = count(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the bot never went quiet"
        await asyncio.sleep(0.05)
        if count() != seen:
            seen, since = count(), time.monotonic()


# -- console ------------------------------------------------------------------------------------

CONSOLE_BYTES = (
    ("invalid-utf8", b"caf\xe9 \xff\xfe ok", "You said: caf"),
    ("surrogate-as-utf8", b"hi \xed\xa0\xbd there", "You said: hi"),
    ("nul-bytes", b"\x00\x00\x00", "Empty message"),
    ("over-a-megabyte", b"y " * 600_000, "too long for me"),
)


async def _console_line(core: Core, raw: bytes, name: str = "you") -> str:
    out = io.StringIO()
    adapter = ConsoleAdapter(core.service, stdin=io.BytesIO(b""), stdout=out, user_name=name)
    await adapter.handle_line(raw)
    return out.getvalue()


async def test_console(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings, _ = load_settings(None, {"SELFTUNE_DATA_DIR": str(tmp_path / "data"), **UNLIMITED})
    core = await _core(settings)
    tally, sent = Tally("the console"), []
    try:
        for case in TEXTS:
            line = case.text.replace("\n", " ")  # one line is one message
            output = await _console_line(core, line.encode("utf-8", "surrogatepass") + b"\n")
            tally.answer(case.id, output or None, case.expect)
            sent.append((case.id, line.encode("utf-8", "surrogatepass"), None))
        for case_id, raw, expect in CONSOLE_BYTES:
            tally.answer(case_id, await _console_line(core, raw + b"\n") or None, expect)
            sent.append((case_id, raw, None))
        for case in NAMES:
            output = await _console_line(core, f"{NAMED_TEXT} {case.id}\n".encode(), case.text)
            tally.answer(case.id, output or None, "You said: hello")
            sent.append((case.id, f"{NAMED_TEXT} {case.id}".encode(), named(case.text)))
        history = await core.repo.history("console:local", 10_000)
        for case_id, raw, name in sent:
            text = stored_text(raw.decode("utf-8", "replace"), None)
            if text is not None:
                tally.check_stored(case_id, history, text, name)
    finally:
        await core.aclose()
    tally.check_log(caplog)
    tally.assert_clean()


# -- Telegram -----------------------------------------------------------------------------------

FIRST_USER = 5000  # one private chat per text case, from here on
GROUP = -100777
PHOTO = [{"file_id": "p", "file_unique_id": "pu", "width": 9, "height": 9}]
STICKER = {
    "file_id": "s",
    "file_unique_id": "su",
    "type": "regular",
    "width": 512,
    "height": 512,
    "is_animated": False,
    "is_video": False,
}


def _tg_text(tg: FakeTelegram, chat_id: int) -> str | None:
    """Everything the bot shows in a chat now, or None when it said nothing there."""
    texts = [m.get("text", "") for m in tg.bot_messages(chat_id)]
    return "\n".join(texts) if texts else None


class TelegramCorpus:
    """Pushes the corpus to a fake Telegram; each case has its own chat or button press."""

    def __init__(self, tg: FakeTelegram) -> None:
        self.tg = tg
        self.users = iter(range(FIRST_USER, FIRST_USER + 1000))
        self.replies: dict[str, tuple[int, str | None]] = {}  # case → (chat, expected piece)
        self.silent: dict[str, int] = {}  # case → chat that must stay silent
        self.presses: dict[str, str] = {}  # case → callback query id
        self.stored: dict[str, tuple[int, str, str | None]] = {}  # case → (chat, text, name)

    def private(self, first_name: str = "Ann") -> tuple[dict[str, Any], dict[str, Any]]:
        user = self.tg.user(next(self.users), first_name)
        return user, self.tg.private_chat(user)

    def texts(self) -> None:
        for case in TEXTS:
            user, chat = self.private()
            self.tg.push_text(chat, user, case.text)
            self.replies[case.id] = (chat["id"], case.expect)
            if (text := stored_text(case.text, BOT_USERNAME)) is not None:
                self.stored[case.id] = (chat["id"], text, None)

    def names(self) -> None:
        for case in NAMES:
            user, chat = self.private(case.text)
            user["last_name"] = "\u202e\ud83d"  # half an emoji, reversed, in the last name too
            self.tg.push_text(chat, user, NAMED_TEXT)
            self.replies[case.id] = (chat["id"], "You said: hello")
            name = named(f"{case.text} {user['last_name']}")
            self.stored[case.id] = (chat["id"], NAMED_TEXT, name)

    def other_updates(self) -> None:
        """Edits, media without text, service messages, unknown update types."""
        tg = self.tg
        user, chat = self.private()
        tg.push({"edited_message": {**tg.message(chat, user, "edited"), "edit_date": 1}})
        self.replies["tg-edited-private"] = (chat["id"], "not edits")
        for case, extra in (
            ("tg-photo", {"photo": PHOTO}),
            ("tg-photo-caption", {"photo": PHOTO, "caption": "hi \ud83d"}),
            ("tg-sticker", {"sticker": STICKER}),
            ("tg-voice", {"voice": {"file_id": "v", "file_unique_id": "vu", "duration": 1}}),
        ):
            user, chat = self.private()
            tg.push({"message": tg.message(chat, user, None, **extra)})
            self.replies[case] = (chat["id"], "only read text")
        group, member = tg.group(GROUP), tg.user(next(self.users))
        tg.push({"edited_message": {**tg.message(group, member, "edited"), "edit_date": 1}})
        tg.push({"message": tg.message(group, member, None, photo=PHOTO)})
        tg.push({"message": tg.message(group, member, None, new_chat_members=[member])})
        tg.push({"message": tg.message(group, member, "chatting \ud83d among ourselves")})
        mention = f"@{BOT_USERNAME} hi \ud83d"  # entities are counted in UTF-16 units
        tg.push_text(tg.group(GROUP + 1), member, mention)
        self.replies["tg-mention-surrogate"] = (GROUP + 1, "You said: Ann")
        user, chat = self.private()
        tg.push_text(chat, user, f"\ud83d @someone \ud83d and @{BOT_USERNAME}")
        self.replies["tg-mentions-surrogates"] = (chat["id"], "@someone")
        for case in ("tg-edited-group", "tg-photo-group", "tg-joined-group", "tg-group-chat"):
            self.silent[case] = GROUP
        self.unknown_updates(member)

    def unknown_updates(self, member: dict[str, Any]) -> None:
        tg, now = self.tg, int(time.time())
        channel = {"id": -100888, "type": "channel", "title": "News"}
        old = {"user": tg.user(4242), "status": "left"}
        poll = {"text": "a", "voter_count": 0, "persistent_id": "o1"}
        for case, update in (
            (
                "tg-channel-post",
                {
                    "channel_post": {
                        "message_id": 1,
                        "date": now,
                        "chat": channel,
                        "text": "hi \ud83d",
                    }
                },
            ),
            (
                "tg-poll",
                {
                    "poll": {
                        "id": "p",
                        "question": "?",
                        "options": [poll],
                        "total_voter_count": 0,
                        "is_closed": False,
                        "is_anonymous": True,
                        "type": "regular",
                        "allows_multiple_answers": False,
                        "allows_revoting": False,
                        "members_only": False,
                    }
                },
            ),
            (
                "tg-inline-query",
                {"inline_query": {"id": "iq", "from": member, "query": "\ud83d", "offset": ""}},
            ),
            (
                "tg-my-chat-member",
                {
                    "my_chat_member": {
                        "chat": tg.group(GROUP),
                        "from": member,
                        "date": now,
                        "old_chat_member": old,
                        "new_chat_member": {**old, "status": "member"},
                    }
                },
            ),
            ("tg-unknown-type", {"something_new": {"id": 1, "text": "\ud83d"}}),
        ):
            tg.push(update)
            self.silent[case] = channel["id"]

    async def presses_on(self, core: Core) -> None:
        """Forged button data on a real reply, and a real id pressed from a foreign chat."""
        tg = self.tg
        user, chat = self.private()
        start = len(tg.calls)
        tg.push_text(chat, user, "rate me")
        final = await tg.reply(chat["id"], start=start)
        self.replies["tg-rated"] = (chat["id"], "You said: rate me")
        message = tg.messages[(chat["id"], final.result["message_id"])]
        for case, data in (
            ("tg-data-letters", "rate:abc:1"),
            ("tg-data-bad-vote", f"rate:{final.exchange_id}:2"),
            ("tg-data-huge-id", f"rate:{'9' * 30}:1"),
            ("tg-data-max-plus-one", "rate:2147483648:1"),
            ("tg-data-arabic-digit", "rate:٣:1"),
            ("tg-data-empty", ""),
            ("tg-data-surrogate", "rate:\ud83d:1"),
            ("tg-data-other-button", f"rate:{final.exchange_id + 1}:1"),
            ("tg-data-newline", f"rate:{final.exchange_id}:1\n"),
        ):
            self.presses[case] = tg.push_callback(user, message, data)
        stranger, elsewhere = self.private()
        foreign = {"chat": elsewhere, "message_id": 99, "date": 0}
        data = f"rate:{final.exchange_id}:1"
        self.presses["tg-foreign-chat"] = tg.push_callback(
            stranger, foreign, data, inaccessible=True
        )
        query = {
            "id": "qgame",
            "from": user,
            "chat_instance": "ci",
            "message": message,
            "game_short_name": "g",
        }
        tg.push({"callback_query": query})
        self.presses["tg-no-data"] = "qgame"

    def toast(self, query_id: str) -> str | None:
        for call in self.tg.calls_to("answerCallbackQuery"):
            if call.params.get("callback_query_id") == query_id:
                return str(call.params.get("text") or "") or None
        return None


async def test_telegram(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    admins = [f"telegram:{uid}" for uid in range(FIRST_USER, FIRST_USER + 1000)]
    env = {"SELFTUNE_DATA_DIR": str(tmp_path / "data"), "SELFTUNE_ADMINS": json.dumps(admins)}
    settings, _ = load_settings(None, {**env, **UNLIMITED})
    core, tally = await _core(settings), Tally("Telegram")
    try:
        async with FakeTelegram() as tg:
            adapter = TelegramAdapter(core.service, bot_settings(tg))
            async with running(adapter):
                corpus = TelegramCorpus(tg)
                corpus.texts()
                corpus.names()
                corpus.other_updates()
                await corpus.presses_on(core)
                chats = [chat for chat, _ in corpus.replies.values()]
                await tg.wait_until(lambda: all(tg.bot_messages(c) for c in chats), within=60)
                await tg.wait_until(lambda: all(corpus.toast(q) for q in corpus.presses.values()))
                await _settle(lambda: len(tg.calls))
            _tally_telegram(tally, corpus)
            for case, (chat, text, name) in corpus.stored.items():
                tally.check_stored(
                    case, await core.repo.history(f"telegram:{chat}", 100), text, name
                )
    finally:
        await core.aclose()
    tally.check_log(caplog)
    tally.assert_clean()


def _tally_telegram(tally: Tally, corpus: TelegramCorpus) -> None:
    for case, (chat, expect) in corpus.replies.items():
        tally.answer(case, _tg_text(corpus.tg, chat), expect)
    for case, query in corpus.presses.items():
        tally.answer(case, corpus.toast(query), "nothing")
    for case, chat in corpus.silent.items():
        tally.silence(case, _tg_text(corpus.tg, chat))
    spoken = {c.chat_id for c in corpus.tg.calls if c.method == "sendMessage"}
    expected = {chat for chat, _ in corpus.replies.values()}
    for chat in spoken - expected:
        tally.problems.append(f"the bot wrote to chat {chat}, where nothing was asked")


# -- Discord ------------------------------------------------------------------------------------


class DiscordCorpus:
    """Sends the corpus to a fake Discord; each text case comes from its own user's DM."""

    def __init__(self, fake: FakeDiscord, users: list[FakeUser]) -> None:
        self.fake = fake
        self.users = iter(users)
        self.replies: dict[str, tuple[int, str | None]] = {}  # case → (channel, expected piece)
        self.silent: dict[str, int] = {}
        self.interactions: dict[str, tuple[Any, str]] = {}  # case → (record, expected piece)
        self.unanswered: dict[str, Any] = {}  # case → interaction that must get no answer
        self.stored: dict[str, tuple[int, str, str | None]] = {}

    async def texts(self) -> None:
        for case in TEXTS:
            user = next(self.users)
            await self.fake.user_says(user, case.text)
            dm = self.fake.dm_channel(user)
            self.replies[case.id] = (dm, case.expect)
            if (text := stored_text(case.text, self.fake.bot.name)) is not None:
                self.stored[case.id] = (dm, text, None)

    async def names(self) -> None:
        for case in NAMES:
            user = FakeUser(self.fake.new_id(), case.text)
            await self.fake.user_says(user, NAMED_TEXT)
            dm = self.fake.dm_channel(user)
            self.replies[case.id] = (dm, "You said: hello")
            self.stored[case.id] = (dm, NAMED_TEXT, named(case.text.title()))

    async def other_events(self) -> None:
        """Edits, attachments and stickers, other message types, other bots, unknown events."""
        fake = self.fake
        file = {"id": "1", "filename": "a\ud83d.png", "size": 1, "url": "u", "proxy_url": "u"}
        sticker = {"id": "2", "name": "wave", "format_type": 1}
        for case, content, extra, expect in (
            ("dc-attachment-only", "", {"attachments": [file]}, "cannot see the file"),
            ("dc-sticker-only", "", {"sticker_items": [sticker]}, "cannot see the sticker"),
            ("dc-attachment-and-text", "look", {"attachments": [file]}, "left out the file"),
        ):
            user = next(self.users)
            await fake.user_says(user, content, **extra)
            self.replies[case] = (fake.dm_channel(user), expect)
        quiet = fake.other_channel_id
        await fake.user_says(fake.alice, "", channel_id=quiet, type=7)  # "alice joined"
        await fake.user_says(fake.other_bot, "hi", channel_id=quiet, mention_bot=True)
        said = await fake.user_says(fake.bob, "chatting \ud83d among us", channel_id=quiet)
        # An edit that now names the bot: edits are not read (a deliberate silence).
        await fake.user_edits(said, f"<@{fake.bot.id}> and now? \ud83d")
        # A reply to a message that is gone: looked up, not found, so not addressed to the bot.
        gone = {"type": 0, "message_id": str(fake.new_id()), "channel_id": str(quiet)}
        await fake.user_says(fake.bob, "re", channel_id=quiet, type=19, message_reference=gone)
        await fake.dispatch("SOMETHING_NEW", {"id": "1", "content": "\ud83d"})
        cases = ("dc-join-message", "dc-other-bot", "dc-not-addressed", "dc-edited-to-mention")
        for case in (*cases, "dc-reply-to-unknown", "dc-unknown-event"):
            self.silent[case] = quiet
        await fake.user_says(fake.bob, "", channel_id=fake.channel_id, mention_bot=True)
        self.replies["dc-mention-only"] = (fake.channel_id, "Empty message")

    async def interactions_from(self, admin: FakeUser) -> None:
        """Forged buttons, slash commands with bad values, an unknown slash command."""
        fake, dm = self.fake, self.fake.dm_channel(admin)
        await fake.user_says(admin, "rate me")
        reply = (
            await fake.wait_for(lambda: [m for m in fake.bot_messages(dm) if m["components"]])
        )[0]
        self.replies["dc-rated"] = (dm, "You said: rate me")
        for case, custom_id in (
            ("dc-id-not-on-message", "rate:abc:1"),
            ("dc-id-huge", f"rate:{'9' * 30}:1"),
            ("dc-id-empty", ""),
            ("dc-id-surrogate", "rate:\ud83d:1"),
        ):
            self.interactions[case] = (await fake.click(reply, custom_id, admin), "not one of mine")
        for case, custom_id in (
            ("dc-planted-arabic-digit", "rate:٣:1"),
            ("dc-planted-max-plus-one", "rate:2147483648:1"),
            ("dc-planted-bad-vote", "rate:1:0"),
        ):
            planted = fake.plant_bot_message(dm, "old", [custom_id])
            record = await fake.click(planted, custom_id, admin)
            self.interactions[case] = (record, "not one of mine")
        for case, name, options, expect in (
            ("dc-slash-activate-huge", "activate", {"version": "9" * 30}, "There is no adapter"),
            ("dc-slash-adapters-superscript", "adapters", {"version": "²"}, "Usage: /adapters"),
            ("dc-slash-rollback-negative", "rollback", {"version": "-1"}, "Usage: /rollback"),
            ("dc-slash-ab-arabic", "ab", {"text": "start ٣"}, "Usage: /ab start"),
            ("dc-slash-persona-surrogate", "persona", {"text": "\ud83d"}, "Persona set"),
            ("dc-slash-persona-bidi", "persona", {"text": "\u202e"}, "My persona here"),
            ("dc-slash-unknown", "nope", {}, "not one of my commands"),
        ):
            self.interactions[case] = (await fake.slash(name, admin, dm, **options), expect)
        # A modal the bot never opened: nothing to answer (a deliberate silence).
        modal = {"custom_id": "rate:1:1", "components": []}
        self.unanswered["dc-forged-modal"] = await fake.interact(5, admin, dm, modal)


def _dc_text(fake: FakeDiscord, channel: int) -> str | None:
    texts = [m["content"] for m in fake.bot_messages(channel)]
    return "\n".join(texts) if texts else None


def _dc_answer(fake: FakeDiscord, record: Any) -> str | None:
    texts = [m["content"] for m in fake.answers(record) if m["content"]]
    return "\n".join(texts) if texts else None


async def test_discord(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fake:
        users = [FakeUser(fake.new_id(), f"user{i}") for i in range(len(TEXTS) + 10)]
        admins = json.dumps([f"discord:{u.id}" for u in users])
        env = {"SELFTUNE_ADMINS": admins, **UNLIMITED}
        core, tally = (
            await _core(discord_settings(tmp_path / "data", fake, **env)),
            Tally("Discord"),
        )
        try:
            async with run_bot(core.service, core.settings, fake):
                corpus = DiscordCorpus(fake, users)
                await corpus.texts()
                await corpus.names()
                await corpus.other_events()
                await corpus.interactions_from(users[-1])
                channels = [c for c, _ in corpus.replies.values()]
                await fake.wait_for(lambda: all(fake.bot_messages(c) for c in channels), 60)
                records = [r for r, _ in corpus.interactions.values()]
                await fake.wait_for(lambda: all(_dc_answer(fake, r) for r in records), 30)
                await _settle(lambda: len(fake.calls))
            _tally_discord(tally, corpus)
            for case, (dm, text, name) in corpus.stored.items():
                tally.check_stored(case, await core.repo.history(f"discord:{dm}", 100), text, name)
        finally:
            await core.aclose()
    tally.check_log(caplog)
    tally.assert_clean()


def _tally_discord(tally: Tally, corpus: DiscordCorpus) -> None:
    fake = corpus.fake
    for case, (channel, expect) in corpus.replies.items():
        tally.answer(case, _dc_text(fake, channel), expect)
    for case, (record, expect) in corpus.interactions.items():
        tally.answer(case, _dc_answer(fake, record), expect)
    for case, channel in corpus.silent.items():
        tally.silence(case, _dc_text(fake, channel))
    for case, record in corpus.unanswered.items():
        tally.silence(
            case, _dc_answer(fake, record) or (str(record.callbacks) if record.callbacks else None)
        )
