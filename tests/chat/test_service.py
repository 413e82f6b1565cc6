"""ChatService over a real migrated database and the scripted generator."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from bot.app import Core, build_core
from bot.errors import GenerationError, LoraError
from bot.generation import ScriptedGenerator
from bot.settings import Settings
from bot.types import Draft, Incoming, RateAction, Reply, ReplyKind, Turn, Vote
from tests.support.records import add_version

ME = Incoming("console", "local", "local", "Ann", "")
GUEST = Incoming("telegram", "-100", "7", "Bob", "", is_private=False)


async def say(core: Core, text: str, who: Incoming = ME) -> tuple[list[Draft], Reply]:
    items = [item async for item in core.service.respond(replace(who, text=text))]
    *drafts, final = items
    assert isinstance(final, Reply)
    assert all(isinstance(d, Draft) for d in drafts)
    return drafts, final  # type: ignore[return-value]


async def test_reply_streams_and_is_stored_with_its_prompt(core: Core) -> None:
    drafts, reply = await say(core, "Hello there")
    assert [d.text for d in drafts] == [
        "You",
        "You said:",
        "You said: Hello",
        "You said: Hello there",
    ]
    assert reply.rateable and reply.text == "You said: Hello there"
    history = await core.repo.history("console:local", 10)
    assert [(m.role, m.content) for m in history] == [
        ("user", "Hello there"),
        ("assistant", "You said: Hello there"),
    ]
    assert reply.exchange_id is not None
    exchange = await core.repo.exchange(reply.exchange_id)
    assert exchange is not None
    assert exchange.prompt == (
        Turn("system", core.settings.chat.system_prompt),
        Turn("user", "Hello there"),
    )


async def test_history_feeds_the_next_prompt(core: Core, scripted: ScriptedGenerator) -> None:
    await say(core, "one")
    await say(core, "two")
    prompt, _ = scripted.requests[-1]
    assert [t.content for t in prompt[1:]] == ["one", "You said: one", "two"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\x00\x07\x1b"])
async def test_empty_input_gets_a_notice_and_stores_nothing(core: Core, text: str) -> None:
    _, reply = await say(core, text)
    assert reply.kind is ReplyKind.NOTICE and "Empty message" in reply.text
    assert await core.repo.history("console:local", 10) == []


async def test_control_characters_are_dropped_but_text_kept(core: Core) -> None:
    _, reply = await say(core, "he\x00llo\x1b wor\tld\r")
    assert reply.text == "You said: hello wor\tld"


async def test_unknown_command(core: Core) -> None:
    _, reply = await say(core, "/frobnicate now")
    assert reply.kind is ReplyKind.NOTICE and "Unknown command /frobnicate" in reply.text


async def test_group_rules_and_names_in_the_prompt(core: Core, scripted: ScriptedGenerator) -> None:
    service = core.service
    assert not service.should_answer(replace(GUEST, text="chatting among ourselves"))
    assert service.should_answer(replace(GUEST, text="hi", mentions_bot=True))
    assert service.should_answer(replace(GUEST, text="hi", reply_to_bot=True))
    assert service.should_answer(replace(GUEST, text="/help"))
    assert not service.should_answer(replace(GUEST, text="/help@otherbot"), "selftune_bot")
    assert service.should_answer(ME)
    await say(core, "hi bot", GUEST)
    prompt, _ = scripted.requests[-1]
    assert prompt[-1] == Turn("user", "Bob: hi bot")


async def test_persona_is_the_system_prompt(core: Core, scripted: ScriptedGenerator) -> None:
    _, shown = await say(core, "/persona")
    assert "(default)" in shown.text
    _, done = await say(core, "/persona You are a pirate.")
    assert "Persona set" in done.text
    await say(core, "ahoy")
    assert scripted.requests[-1][0][0] == Turn("system", "You are a pirate.")
    _, too_long = await say(core, "/persona " + "x" * 2000)
    assert too_long.kind is ReplyKind.NOTICE and "limit is 1000" in too_long.text
    await say(core, "/persona reset")
    await say(core, "hello")
    assert scripted.requests[-1][0][0].content == core.settings.chat.system_prompt


async def test_new_starts_an_empty_context(core: Core, scripted: ScriptedGenerator) -> None:
    await say(core, "remember me")
    _, reply = await say(core, "/new")
    assert "new conversation" in reply.text
    await say(core, "fresh")
    assert [t.content for t in scripted.requests[-1][0][1:]] == ["fresh"]


async def test_history_is_cut_to_the_context_window_by_tokens(settings: Settings) -> None:
    scripted = ScriptedGenerator(context_window=300)
    core = await build_core(settings, generator=scripted, progress=False)
    try:
        for i in range(12):
            await say(core, f"message {i} " + "word " * 10)
        prompt, params = scripted.requests[-1]
        assert await scripted.count_tokens(prompt) <= 300 - params.max_new_tokens
        assert prompt[0].role == "system" and prompt[1].role == "user"
        assert prompt[-1].content.startswith("message 11")
        assert len(prompt) < 1 + 2 * 12 - 1  # the oldest turns were dropped
    finally:
        await core.aclose()


async def test_a_message_too_long_for_the_window_is_refused_but_kept(core: Core) -> None:
    long_text = "word " * 20_000  # ~100 KB
    _, reply = await say(core, long_text)
    assert reply.kind is ReplyKind.ERROR and "too long" in reply.text
    history = await core.repo.history("console:local", 10)
    assert len(history) == 1 and history[0].content == long_text.strip()
    _, after = await say(core, "short one")
    assert after.rateable  # the long message is dropped from the next prompt, not fatal


async def test_generation_failure_is_explained_and_the_message_kept(
    core: Core, scripted: ScriptedGenerator
) -> None:
    scripted.fail_next = "out of memory"
    _, reply = await say(core, "will this work?")
    assert reply.kind is ReplyKind.ERROR and "out of memory" in reply.text
    assert [m.content for m in await core.repo.history("console:local", 10)] == ["will this work?"]
    counts = await core.repo.stats.counts()
    assert counts.failed_exchanges == 1
    _, later = await say(core, "again")
    assert later.rateable


async def test_a_bug_in_the_generator_is_not_taken_for_a_generation_failure(
    core: Core, scripted: ScriptedGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the generators' own errors become an apology; anything else is a bug that must
    surface (the exchange is still recorded as failed)."""

    async def broken(*_args: object, **_kwargs: object) -> AsyncIterator[str]:
        yield "half"
        raise RuntimeError("a bug")

    monkeypatch.setattr(scripted, "stream", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        await say(core, "hello")
    counts = await core.repo.stats.counts()
    assert counts.failed_exchanges == 1


async def test_cancelled_reply_is_recorded_as_failed(settings: Settings) -> None:
    core = await build_core(settings, generator=ScriptedGenerator(delay_s=0.05), progress=False)
    try:
        stream = core.service.respond(replace(ME, text="a b c d e f g h"))

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert inspect.isasyncgen(stream)  # what adapters close on a cancelled reply
        await stream.aclose()
        counts = await core.repo.stats.counts()
        assert counts.failed_exchanges == 1
    finally:
        await core.aclose()


async def test_ratings_by_command_and_by_button(core: Core) -> None:
    _, none_yet = await say(core, "/good")
    assert "no reply of mine" in none_yet.text
    _, reply = await say(core, "hi")
    _, good = await say(core, "+")
    assert "Rated 👍" in good.text
    _, bad = await say(core, "/bad")
    assert "Changed your rating to 👎" in bad.text
    assert reply.exchange_id is not None
    again = await core.service.rate(reply.exchange_id, ME.user_key, Vote.DOWN)
    assert again.action is RateAction.RETRACTED
    assert await core.repo.training.rated() == []


async def test_forged_or_foreign_ratings_change_nothing(core: Core) -> None:
    _, reply = await say(core, "hi")
    assert reply.exchange_id is not None
    unknown = await core.service.rate(999, "telegram:7", Vote.UP)
    foreign = await core.service.rate(
        reply.exchange_id, "telegram:7", Vote.UP, chat_key="telegram:-100"
    )
    assert unknown.action is foreign.action is RateAction.REFUSED
    assert await core.repo.training.rated() == []


async def test_admin_commands_are_refused_to_others(core: Core) -> None:
    for command in ("/finetune", "/status", "/adapters", "/rollback", "/activate 1", "/stats"):
        _, reply = await say(core, command, GUEST)
        assert reply.kind is ReplyKind.NOTICE and "admins only" in reply.text, command
        assert "telegram:7" in reply.text
    _, helped = await say(core, "/help", GUEST)
    assert "/finetune" not in helped.text and "/persona" in helped.text
    _, vouched = await say(core, "/status", replace(GUEST, is_admin=True))
    assert vouched.kind is ReplyKind.COMMAND


async def test_admin_commands_with_nothing_to_do(core: Core) -> None:
    _, finetune = await say(core, "/finetune")
    assert "Nothing to fine-tune on yet: 0 liked replies (need 1)" in finetune.text
    _, rollback = await say(core, "/rollback")
    assert "Nothing to roll back" in rollback.text
    _, activate = await say(core, "/activate 7")
    assert "There is no adapter v7" in activate.text
    _, usage = await say(core, "/activate soon")
    assert "Usage: /activate N" in usage.text
    _, adapters = await say(core, "/adapters")
    assert "No adapter versions yet" in adapters.text
    _, stats = await say(core, "/stats")
    assert "No ratings yet" in stats.text
    _, status = await say(core, "/status")
    assert "Serving: the base model" in status.text and "scripted" in status.text


async def test_stats_is_a_chart_and_numbers(core: Core) -> None:
    await say(core, "hi")
    await say(core, "+")
    _, stats = await say(core, "/stats")
    assert stats.image_png is not None and stats.image_png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "base:    1 /    0  (100% liked)" in stats.text
    assert stats.private


async def test_forget_removes_my_data(core: Core) -> None:
    await say(core, "secret")
    await say(core, "+")
    _, reply = await say(core, "/forget")
    # The message and the reply that quotes it.
    assert "deleted 2 messages, 1 exchanges and 1 ratings" in reply.text
    assert await core.repo.history("console:local", 10) == []
    assert await core.repo.training.rated() == []


async def test_per_user_rate_limit_keeps_the_message(settings: Settings, tmp_path: Path) -> None:
    limited = settings.model_copy(
        update={"chat": settings.chat.model_copy(update={"user_messages_per_minute": 2})}
    )
    core = await build_core(limited, generator=ScriptedGenerator(), progress=False)
    try:
        await say(core, "one")
        await say(core, "two")
        _, reply = await say(core, "three")
        assert reply.kind is ReplyKind.NOTICE and "Slow down" in reply.text
        contents: Sequence[str] = [m.content for m in await core.repo.history("console:local", 10)]
        assert "three" in contents
    finally:
        await core.aclose()


async def test_a_failing_token_count_is_a_clear_error_and_the_message_is_kept(
    core: Core, scripted: ScriptedGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(_turns: Sequence[Turn]) -> int:
        raise GenerationError("cannot reach the model server")

    monkeypatch.setattr(scripted, "count_tokens", unreachable)
    _, reply = await say(core, "Are you there?")
    assert reply.kind is ReplyKind.ERROR
    assert "cannot reach the model server" in reply.text and "saved" in reply.text
    history = await core.repo.history("console:local", 10)
    assert [m.content for m in history] == ["Are you there?"]


@pytest.mark.parametrize(
    "error",
    [LoraError("adapter does not fit the model"), GenerationError("the server is down")],
)
async def test_an_adapter_the_generator_refuses_does_not_stop_replies(
    core: Core,
    scripted: ScriptedGenerator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    error: Exception,
) -> None:
    await add_version(core.repo, tmp_path / "v1")
    await core.repo.adapters.set_active(1)

    async def refuse(_path: Path | None, *, slot: str = "default") -> None:
        raise error

    monkeypatch.setattr(scripted, "swap_lora", refuse)
    _, reply = await say(core, "Hello")
    assert reply.kind is ReplyKind.ANSWER and reply.adapter_version is None
