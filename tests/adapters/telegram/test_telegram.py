"""The Telegram adapter through the real python-telegram-bot client and a fake Bot API server:
streaming, groups and topics, splitting, formatting, flood control, commands, other updates."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from adapters.telegram.adapter import EDITS_UNSEEN, SENT_PRIVATELY, TEXT_ONLY, TelegramAdapter
from adapters.telegram.stream import CURSOR
from bot.app import Core, build_core
from bot.generation import ScriptedGenerator
from bot.settings import Settings
from tests.fakes.common import running
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram, bot_settings, utf16_len
from tests.support.records import Script

ADMIN = 1
# PTB 22 builds its own RetryAfter through a deprecated property, which warns; in production a
# warning is only printed, here warnings are errors. The adapter reads the timedelta underneath.
PTB_RETRY_AFTER_WARNING = "ignore:.*`retry_after`:DeprecationWarning"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"admins": [f"telegram:{ADMIN}"]})


@pytest.fixture
def edit_interval_s() -> float:
    return 0.05


@pytest.mark.parametrize("scripted", [0.01], indirect=True)
async def test_private_message_streams_into_one_message_then_gets_buttons(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    script.text = "one two three four five six seven eight nine ten eleven twelve"
    ann = tg.user(1001)
    chat = tg.private_chat(ann)
    start = len(tg.calls)
    tg.push_text(chat, ann, "Count for me")
    final = await tg.reply(1001, start=start)

    typing = tg.calls_to("sendChatAction", chat_id=1001)
    sends = tg.calls_to("sendMessage", chat_id=1001)
    edits = tg.calls_to("editMessageText", chat_id=1001)
    assert typing and typing[0].params["action"] == "typing"
    assert len(sends) == 1 and sends[0].text is not None and sends[0].text.endswith(CURSOR)
    assert len(edits) >= 2 and final is edits[-1]  # grown by edits, finished by the last one
    assert final.text == script.text
    exchange = final.exchange_id
    assert [b["callback_data"] for b in final.buttons] == [
        f"rate:{exchange}:1",
        f"rate:{exchange}:-1",
        f"again:{exchange}",
    ]
    assert [b["text"] for b in final.buttons] == ["👍", "👎", "🔄 another reply"]
    history = await core.repo.history("telegram:1001", 10)
    assert [(m.role, m.content) for m in history] == [
        ("user", "Count for me"),
        ("assistant", script.text),
    ]


@pytest.mark.parametrize("scripted", [0.02], indirect=True)
async def test_edits_are_paced_per_chat(core: Core, tg: FakeTelegram, script: Script) -> None:
    script.text = " ".join(f"w{i}" for i in range(40))  # 0.8 s of writing
    ann = tg.user(1001)
    chat = tg.private_chat(ann)
    async with running(TelegramAdapter(core.service, bot_settings(tg, edit_interval_s=0.25))):
        tg.push_text(chat, ann, "Talk")
        await tg.reply(1001)
    shown = [c for c in tg.calls if c.method in ("sendMessage", "editMessageText")]
    gaps = [b.at - a.at for a, b in itertools.pairwise(shown)]
    assert 2 <= len(shown) <= 6
    assert min(gaps) >= 0.23


async def test_group_answers_only_when_addressed(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter, scripted: ScriptedGenerator
) -> None:
    group = tg.group(-100500)
    ann, bob = tg.user(1001, "Ann"), tg.user(1002, "Bob")
    tg.push_text(group, ann, "just chatting among humans")
    tg.push_text(group, ann, "/help@some_other_bot")
    asked = tg.push_text(group, ann, f"@{BOT_USERNAME} what is up?")
    first = await tg.reply(-100500)
    assert first.text == "You said: Ann: what is up?"  # group prompts say who spoke
    sent = tg.calls_to("sendMessage", chat_id=-100500)
    assert sent[0].params["reply_parameters"]["message_id"] == asked["message_id"]

    start = len(tg.calls)
    tg.push_text(group, bob, "and you?", reply_to=tg.bot_messages(-100500)[-1])
    second = await tg.reply(-100500, start=start)
    assert second.text == "You said: Bob: and you?"
    assert [t.content for t in scripted.requests[-1][0] if t.role == "user"] == [
        "Ann: what is up?",
        "Bob: and you?",
    ]

    start = len(tg.calls)
    tg.push_text(group, bob, f"/help@{BOT_USERNAME}")
    help_call = await tg.reply(-100500, start=start, rated=False)
    assert help_call.text is not None and "/persona" in help_call.text
    history = await core.repo.history("telegram:-100500", 20)
    assert "just chatting among humans" not in [m.content for m in history]
    assert len(tg.calls_to("sendMessage", chat_id=-100500)) == 3  # two answers and /help


async def test_each_forum_topic_is_its_own_conversation(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    forum = tg.group(-100600, forum=True)
    ann = tg.user(1001, "Ann")
    tg.push_text(forum, ann, "talking in the topic, not to the bot", thread_id=7)
    tg.push_text(forum, ann, f"@{BOT_USERNAME} in topic seven", thread_id=7)
    seven = await tg.reply(-100600)
    start = len(tg.calls)
    tg.push_text(forum, ann, f"@{BOT_USERNAME} in topic eight", thread_id=8)
    await tg.reply(-100600, start=start)

    sends = tg.calls_to("sendMessage", chat_id=-100600)
    assert [c.params.get("message_thread_id") for c in sends] == [7, 8]
    assert seven.text == "You said: Ann: in topic seven"
    seven_history = await core.repo.history("telegram:-100600:7", 10)
    eight_history = await core.repo.history("telegram:-100600:8", 10)
    assert [m.content for m in seven_history] == ["in topic seven", seven.text]
    assert [m.content for m in eight_history] == ["in topic eight", "You said: Ann: in topic eight"]


async def test_long_reply_is_split_on_boundaries_and_nothing_is_lost(
    tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    # The scripted model writes at most 256 words: make them long (an emoji is 2 in UTF-16).
    paragraph = " ".join(f"word{i}-{'x' * 30}🙂" for i in range(19))
    script.text = "\n\n".join(f"{n}. {paragraph}" for n in range(12))
    assert utf16_len(script.text) > 2 * 4096
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Write a lot")
    await tg.reply(1001)

    messages = tg.bot_messages(1001)
    assert len(messages) == 3
    assert all(utf16_len(m["text"]) <= 4096 for m in messages)
    assert all(re.match(r"\d+\. word0", m["text"]) for m in messages)  # cut between paragraphs
    assert " ".join(m["text"] for m in messages).split() == script.text.split()
    assert ["reply_markup" in m for m in messages] == [False, False, True]


async def test_markdown_is_rendered_as_escaped_html(
    tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    script.text = (
        "**Bold** and `a<b>` & [docs](https://example.com/a_b) _it_\n```py\nx = 1 < 2\n```"
    )
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Format")
    final = await tg.reply(1001)
    assert final.params["parse_mode"] == "HTML"
    assert final.text == (
        '<b>Bold</b> and <code>a&lt;b&gt;</code> &amp; <a href="https://example.com/a_b">docs'
        '</a> <i>it</i>\n<pre><code class="language-py">x = 1 &lt; 2</code></pre>'
    )
    assert tg.bot_messages(1001)[0]["text"] == "Bold and a<b> & docs it\nx = 1 < 2"


@pytest.mark.parametrize("scripted", [0.01], indirect=True)
async def test_refused_formatting_falls_back_to_plain_text(
    tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    script.text = "Some **bold** words and more words to stream"
    tg.refuse_formatting("sendMessage")
    tg.refuse_formatting("editMessageText", times=100)
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Format")
    final = await tg.reply(1001)
    assert "parse_mode" not in final.params
    assert final.text == script.text
    assert tg.bot_messages(1001)[0]["text"] == script.text


@pytest.mark.filterwarnings(PTB_RETRY_AFTER_WARNING)
async def test_flood_control_is_waited_out_and_the_same_text_sent_again(
    tg: FakeTelegram, bot: TelegramAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    tg.flood("sendMessage", retry_after=1)
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Hello")
    final = await tg.reply(1001)
    refused, sent = tg.calls_to("sendMessage", chat_id=1001)
    assert (refused.status, sent.status) == (429, 200)
    assert sent.at - refused.at >= 1.0
    assert sent.text == refused.text  # the same call again, not a shortened one
    assert final.text == "You said: Hello"
    assert tg.token not in "".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("httpx")
    )


@pytest.mark.filterwarnings(PTB_RETRY_AFTER_WARNING)
@pytest.mark.parametrize("scripted", [0.01], indirect=True)
async def test_flood_on_the_final_edit_still_delivers_the_buttons(
    tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    script.text = "a b c d e f g h"
    tg.flood("editMessageText", retry_after=1, when=lambda c: "reply_markup" in c.params)
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Hello")
    final = await tg.reply(1001)
    assert final.text == script.text
    assert tg.bot_messages(1001)[-1]["reply_markup"]["inline_keyboard"]


async def test_admin_commands_are_refused_to_others(tg: FakeTelegram, bot: TelegramAdapter) -> None:
    eve, admin = tg.user(1002, "Eve"), tg.user(ADMIN, "Root")
    tg.push_text(tg.private_chat(eve), eve, "/status")
    refusal = await tg.reply(1002, rated=False)
    assert refusal.text is not None and "for admins only" in refusal.text
    assert "telegram:1002" in refusal.text
    tg.push_text(tg.private_chat(admin), admin, "/status")
    status = await tg.reply(ADMIN, rated=False)
    assert status.text is not None and status.text.startswith("Model: scripted")


async def test_admin_output_asked_in_a_group_goes_to_a_private_chat(
    tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    group = tg.group(-100700)
    admin = tg.user(ADMIN, "Root")
    tg.push_text(group, admin, f"/adapters@{BOT_USERNAME}")
    note = await tg.reply(-100700, rated=False)
    assert note.text is not None and "Start a private chat with me" in note.text  # no DM yet

    tg.private_chat(admin)
    start = len(tg.calls)
    tg.push_text(group, admin, f"/adapters@{BOT_USERNAME}")
    private = await tg.reply(ADMIN, start=start, rated=False)
    note = await tg.reply(-100700, start=start, rated=False)
    assert private.text is not None and "base model" in private.text
    assert note.text == SENT_PRIVATELY


async def test_commands_are_registered_for_users_and_admins(
    tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    users = {c["command"] for c in tg.commands['{"type": "default"}']}
    admins = {c["command"] for c in tg.commands[f'{{"chat_id": {ADMIN}, "type": "chat"}}']}
    assert {"start", "help", "new", "persona", "forget"} <= users
    assert not users & {"finetune", "status", "adapters", "rollback", "stats"}
    assert {"finetune", "status", "adapters", "rollback", "stats"} <= admins


async def test_other_updates_get_a_note_in_private_and_silence_in_groups(
    tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    ann = tg.user(1001)
    chat, group = tg.private_chat(ann), tg.group(-100800)
    photo = [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]
    sticker = {
        "file_id": "s",
        "file_unique_id": "su",
        "type": "regular",
        "width": 1,
        "height": 1,
        "is_animated": False,
        "is_video": False,
    }
    voice = {"file_id": "v", "file_unique_id": "vu", "duration": 2}
    tg.push({"message": tg.message(group, ann, photo=photo, caption=f"@{BOT_USERNAME} look")})
    tg.push({"message": tg.message(chat, ann, photo=photo)})
    tg.push({"message": tg.message(chat, ann, sticker=sticker)})
    tg.push({"message": tg.message(chat, ann, voice=voice)})
    edited = tg.message(chat, ann, "Hello", edit_date=int(time.time()))
    tg.push({"edited_message": edited})
    await tg.wait_until(lambda: len(tg.calls_to("sendMessage", chat_id=1001)) == 4)
    texts = sorted(c.text or "" for c in tg.calls_to("sendMessage", chat_id=1001))
    assert texts == sorted([TEXT_ONLY, TEXT_ONLY, TEXT_ONLY, EDITS_UNSEEN])

    tg.push_text(chat, ann, "still there?")
    assert (await tg.reply(1001)).text == "You said: still there?"
    assert not tg.calls_to("sendMessage", chat_id=-100800)


async def test_failed_generation_gets_an_error_and_keeps_the_message(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter, scripted: ScriptedGenerator
) -> None:
    scripted.fail_next = "the model ran out of memory"
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Please answer")
    error = await tg.reply(1001, rated=False)
    assert error.text is not None and "could not write a reply" in error.text
    assert "the model ran out of memory" in error.text
    history = await core.repo.history("telegram:1001", 10)
    assert [m.content for m in history] == ["Please answer"]


async def test_too_many_messages_get_a_slow_down_and_are_still_stored(
    settings: Settings, scripted: ScriptedGenerator, tg: FakeTelegram
) -> None:
    limited = settings.model_copy(
        update={"chat": settings.chat.model_copy(update={"user_messages_per_minute": 2})}
    )
    core = await build_core(limited, generator=scripted, progress=False)
    try:
        ann = tg.user(1001)
        chat = tg.private_chat(ann)
        async with running(TelegramAdapter(core.service, bot_settings(tg))):
            for n in range(3):
                start = len(tg.calls)
                tg.push_text(chat, ann, f"message {n}")
                last = await tg.reply(1001, start=start, rated=n < 2)
        assert last.text is not None and last.text.startswith("Slow down")
        history = await core.repo.history("telegram:1001", 10)
        assert [m.content for m in history if m.role == "user"] == [
            "message 0",
            "message 1",
            "message 2",
        ]
    finally:
        await core.aclose()


async def test_core_notices_reach_the_chat_and_topic_of_their_key(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    tg.group(-100600, forum=True)
    core.outbox.register("telegram", bot.send)
    await core.outbox.send("telegram:-100600:7", "Fine-tuning finished: **v1** is serving.")
    call = await tg.wait_for(lambda c: c.method == "sendMessage" and c.ok)
    assert (call.chat_id, call.params["message_thread_id"]) == (-100600, 7)
    assert call.text == "Fine-tuning finished: <b>v1</b> is serving."


async def test_stats_chart_is_sent_as_a_photo(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    admin = tg.user(ADMIN, "Root")
    chat = tg.private_chat(admin)
    tg.push_text(chat, admin, "Hello")
    final = await tg.reply(ADMIN)
    tg.push_callback(admin, tg.bot_messages(ADMIN)[-1])
    await tg.wait_for(lambda c: c.method == "editMessageReplyMarkup")
    start = len(tg.calls)
    tg.push_text(chat, admin, "/stats")
    photo = await tg.wait_for(lambda c: c.method == "sendPhoto" and c.ok, start=start)
    assert next(iter(photo.files.values())).startswith(b"\x89PNG")
    assert final.exchange_id == 1


@pytest.mark.parametrize("scripted", [0.02], indirect=True)
async def test_a_draft_deleted_by_the_user_goes_on_in_a_new_message(
    tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    script.text = "one two three four five six seven eight nine ten eleven twelve"
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Count")
    first = await tg.wait_for(lambda c: c.method == "sendMessage" and c.ok)
    del tg.messages[(1001, first.result["message_id"])]
    final = await tg.reply(1001)
    assert final.text == script.text
    assert [m["text"] for m in tg.bot_messages(1001)] == [script.text]
    assert [c.status for c in tg.calls_to("sendMessage")] == [200, 200]
    assert 400 in [c.status for c in tg.calls_to("editMessageText")]
