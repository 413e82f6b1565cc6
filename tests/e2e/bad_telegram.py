"""The bad-input corpus (bad_inputs.py) as Telegram updates on the fake Bot API server: texts
and names each in a private chat of their own, edits, media without text, service messages,
unknown update types, forged button data. ``count`` then says what the bot did with each."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.bad_inputs import NAMED_TEXT, NAMES, TEXTS, Tally, named, stored_text
from tests.fakes.telegram_server import BOT_USER, BOT_USERNAME, FakeTelegram

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

CHANNEL = {"id": -100888, "type": "channel", "title": "News"}
POLL = {
    "id": "p",
    "question": "?",
    "options": [{"text": "a", "voter_count": 0, "persistent_id": "o1"}],
    "total_voter_count": 0,
    "is_closed": False,
    "is_anonymous": True,
    "type": "regular",
    "allows_multiple_answers": False,
    "allows_revoting": False,
    "members_only": False,
}


def odd_updates(group: dict[str, Any], member: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Updates the bot has no handler for, each to pass in silence (all well-formed: one PTB
    cannot parse is another matter, the polling loop's)."""
    now = int(time.time())
    post = {"message_id": 1, "date": now, "chat": CHANNEL, "text": "hi \ud83d"}
    old = {"user": BOT_USER, "status": "left"}
    joined = {"chat": group, "from": member, "date": now, "old_chat_member": old}
    query = {"id": "iq", "from": member, "query": "\ud83d", "offset": ""}
    return {
        "tg-channel-post": {"channel_post": post},
        "tg-poll": {"poll": POLL},
        "tg-inline-query": {"inline_query": query},
        "tg-my-chat-member": {
            "my_chat_member": {**joined, "new_chat_member": {**old, "status": "member"}}
        },
        "tg-unknown-type": {"something_new": {"id": 1, "text": "\ud83d"}},
    }


def shown_in(tg: FakeTelegram, chat_id: int) -> str | None:
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
        for case, update in odd_updates(self.tg.group(GROUP), member).items():
            self.tg.push(update)
            self.silent[case] = int(str(CHANNEL["id"]))

    async def press_buttons(self) -> None:
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
        """The text the bot answered a button press with (None: not answered yet)."""
        for call in self.tg.calls_to("answerCallbackQuery"):
            if call.params.get("callback_query_id") == query_id:
                return str(call.params.get("text") or "") or None
        return None

    def count(self, tally: Tally) -> None:
        """What the bot did with each case, into ``tally``."""
        for case, (chat, expect) in self.replies.items():
            tally.answer(case, shown_in(self.tg, chat), expect)
        for case, query in self.presses.items():
            tally.answer(case, self.toast(query), "nothing")
        for case, chat in self.silent.items():
            tally.silence(case, shown_in(self.tg, chat))
        spoken = {c.chat_id for c in self.tg.calls if c.method == "sendMessage"}
        expected = {chat for chat, _ in self.replies.values()}
        for stray in spoken - expected:
            tally.problems.append(f"the bot wrote to chat {stray}, where nothing was asked")
