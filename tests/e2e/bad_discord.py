"""The bad-input corpus (bad_inputs.py) as Discord events on the fake server: texts and names
each in a DM of their own, attachments and stickers, other message types, edits, unknown
events, forged buttons, slash commands with bad values. ``count`` then says what the bot did."""

from __future__ import annotations

from typing import Any

from tests.e2e.bad_inputs import NAMED_TEXT, NAMES, TEXTS, Tally, named, stored_text
from tests.fakes.discord_server import FakeDiscord, FakeUser


def shown_in(fake: FakeDiscord, channel: int) -> str | None:
    texts = [m["content"] for m in fake.bot_messages(channel)]
    return "\n".join(texts) if texts else None


def answered(fake: FakeDiscord, record: Any) -> str | None:
    texts = [m["content"] for m in fake.answers(record) if m["content"]]
    return "\n".join(texts) if texts else None


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
        files: list[tuple[str, str, dict[str, Any], str]] = [
            ("dc-attachment-only", "", {"attachments": [file]}, "cannot see the file"),
            ("dc-sticker-only", "", {"sticker_items": [sticker]}, "cannot see the sticker"),
            ("dc-attachment-and-text", "look", {"attachments": [file]}, "left out the file"),
        ]
        for case, content, extra, expect in files:
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

    def count(self, tally: Tally) -> None:
        """What the bot did with each case, into ``tally``."""
        fake = self.fake
        for case, (channel, expect) in self.replies.items():
            tally.answer(case, shown_in(fake, channel), expect)
        for case, (record, expect) in self.interactions.items():
            tally.answer(case, answered(fake, record), expect)
        for case, channel in self.silent.items():
            tally.silence(case, shown_in(fake, channel))
        for case, record in self.unanswered.items():
            acknowledged = str(record.callbacks) if record.callbacks else None
            tally.silence(case, answered(fake, record) or acknowledged)
