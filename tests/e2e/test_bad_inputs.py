"""A corpus of bad inputs (bad_inputs.py; bad_telegram.py and bad_discord.py send it) against
the console, the fake Telegram and the fake Discord, through the real adapters and core: every
input gets a clear reply or a deliberate silence, every message is stored, and nothing is
logged as an error. Each test prints its counts (run with ``-s`` to see them)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from adapters.telegram.adapter import TelegramAdapter
from bot.app import Core, build_core
from bot.generation import ScriptedGenerator
from bot.settings import Settings, load_settings
from tests.e2e.bad_discord import DiscordCorpus, answered
from tests.e2e.bad_inputs import NAMED_TEXT, NAMES, TEXTS, Tally, named, stored_text
from tests.e2e.bad_telegram import FIRST_USER, TelegramCorpus
from tests.fakes.common import running
from tests.fakes.discord_server import FakeDiscord, FakeUser, discord_settings, run_bot
from tests.fakes.telegram_server import FakeTelegram, bot_settings

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
    tally = Tally("the console")
    sent: list[tuple[str, bytes, str | None]] = []
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
                await corpus.press_buttons()
                chats = [chat for chat, _ in corpus.replies.values()]
                await tg.wait_until(lambda: all(tg.bot_messages(c) for c in chats), within=60)
                await tg.wait_until(lambda: all(corpus.toast(q) for q in corpus.presses.values()))
                await _settle(lambda: len(tg.calls))
            corpus.count(tally)
            for case, (chat, text, name) in corpus.stored.items():
                tally.check_stored(
                    case, await core.repo.history(f"telegram:{chat}", 100), text, name
                )
    finally:
        await core.aclose()
    tally.check_log(caplog)
    tally.assert_clean()


# -- Discord ------------------------------------------------------------------------------------


async def test_discord(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fake:
        users = [FakeUser(fake.new_id(), f"user{i}") for i in range(len(TEXTS) + 10)]
        admins = json.dumps([f"discord:{u.id}" for u in users])
        env = {"SELFTUNE_ADMINS": admins, **UNLIMITED}
        settings = discord_settings(tmp_path / "data", fake, **env)
        core, tally = await _core(settings), Tally("Discord")
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
                await fake.wait_for(lambda: all(answered(fake, r) for r in records), 30)
                await _settle(lambda: len(fake.calls))
            corpus.count(tally)
            for case, (dm, text, name) in corpus.stored.items():
                tally.check_stored(case, await core.repo.history(f"discord:{dm}", 100), text, name)
        finally:
            await core.aclose()
    tally.check_log(caplog)
    tally.assert_clean()
