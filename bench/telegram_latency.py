"""Telegram latency with the real default model: the real adapter against the fake Bot API.

What a user sees, timed from the moment their update is handed to the bot's long poll:

- first visible text: the bot's first sendMessage in the chat (the first streamed draft);
- final reply: the sendMessage or edit that puts the 👍/👎 buttons on the answer.

The model's own times are recorded too (its first and last piece of text), so the adapter's
share is visible apart from the model's speed on this machine: "after the model" is the time
from the model's first piece to the first visible text, and from its last piece to the final
reply (which includes waiting for the chat's next edit slot, up to one second).

The adapter runs with the production settings (one edit a second per chat, 30 requests a
second in all). First ``--messages`` users one after another, each in a new private chat
(p50/p95), then ``--users`` users at once: how many were answered, how many messages and
replies were stored, and how long it took.

Run from the repository root:  python -m bench.telegram_latency [--messages 8] [--users 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from adapters.telegram.adapter import TelegramAdapter
from bench.common import PROMPTS, Timing, report, stored_pairs
from bot.app import Core, build_core
from bot.engine.generator import TransformersGenerator
from bot.generation import DEFAULT_SLOT, Generator
from bot.settings import Settings, TelegramSettings, load_settings
from bot.types import GenerationParams, Turn
from tests.fakes.common import running
from tests.fakes.telegram_server import FakeTelegram, bot_settings


class TimedGenerator:
    """The real generator, noting when each prompt's first and last pieces of text came."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.pieces: dict[str, tuple[float, float]] = {}  # last user turn → (first, last)

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def active_lora(self) -> Path | None:
        return self.inner.active_lora

    async def count_tokens(self, turns: Sequence[Turn]) -> int:
        return await self.inner.count_tokens(turns)

    def slot_lora(self, slot: str) -> Path | None:
        return self.inner.slot_lora(slot)

    async def stream(
        self, turns: Sequence[Turn], params: GenerationParams, *, slot: str = DEFAULT_SLOT
    ) -> AsyncIterator[str]:
        key = turns[-1].content
        async for piece in self.inner.stream(turns, params, slot=slot):
            now = time.monotonic()
            self.pieces[key] = (self.pieces.get(key, (now, now))[0], now)
            yield piece

    async def swap_lora(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        await self.inner.swap_lora(path, slot=slot)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _since(at: float | None, start: float | None) -> float | None:
    return None if at is None or start is None else at - start


def timing(
    fake: FakeTelegram, chat_id: int, sent_at: float, model: tuple[float, float] | None = None
) -> Timing:
    calls = [c for c in fake.calls if c.ok and c.chat_id == chat_id and c.at >= sent_at]
    first = min((c.at for c in calls if c.method == "sendMessage"), default=None)
    final = min((c.at for c in calls if c.rated), default=None)
    first_piece, last_piece = model if model else (None, None)
    return Timing(
        _since(first, sent_at),
        _since(final, sent_at),
        _since(first, first_piece),
        _since(final, last_piece),
    )


async def ask(
    fake: FakeTelegram,
    model: TimedGenerator,
    user: dict[str, Any],
    prompt: str,
    within_s: float,
) -> Timing:
    """One user's private message, timed until its final reply (or ``within_s``)."""
    chat = fake.private_chat(user)
    sent_at = time.monotonic()
    fake.push_text(chat, user, prompt)
    with contextlib.suppress(TimeoutError):  # reported as unanswered
        await fake.wait_until(
            lambda: timing(fake, user["id"], sent_at).final_s is not None, within=within_s
        )
    return timing(fake, user["id"], sent_at, model.pieces.get(prompt))


async def sequential(fake: FakeTelegram, model: TimedGenerator, count: int, within: float) -> None:
    await ask(fake, model, fake.user(9_999, "warm"), "Hi! This warms the model up.", within)
    timings = []
    for n in range(count):
        user = fake.user(10_000 + n, f"bench{n}")
        timings.append(await ask(fake, model, user, PROMPTS[n % len(PROMPTS)], within))
    report(f"{count} messages one after another", timings, model_pieces=True)


async def crowd(
    fake: FakeTelegram, core: Core, model: TimedGenerator, count: int, within_s: float
) -> None:
    users = [fake.user(20_000 + n, f"user{n}") for n in range(count)]
    began = time.monotonic()
    timings = await asyncio.gather(
        *(
            ask(fake, model, u, f"{PROMPTS[n % len(PROMPTS)]} (#{n})", within_s)
            for n, u in enumerate(users)
        )
    )
    took = time.monotonic() - began
    answered = sum(t.final_s is not None for t in timings)
    stored = await stored_pairs(core.repo, (f"telegram:{u['id']}" for u in users))
    report(f"{count} users at once", timings, model_pieces=True)
    print(f"{count} users at once: answered {answered}, stored {stored}, {took:.1f} s in all")


def bench_settings(data: str, max_new_tokens: int) -> Settings:
    env = {"SELFTUNE_DATA_DIR": data, "SELFTUNE_CHAT__USER_MESSAGES_PER_MINUTE": "0"}
    if max_new_tokens:
        env["SELFTUNE_GENERATION__MAX_NEW_TOKENS"] = str(max_new_tokens)
    settings, _ = load_settings(None, env)
    return settings


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as data:
        settings = bench_settings(data, args.max_new_tokens)
        began = time.monotonic()
        model = await TransformersGenerator.load(settings.model, settings.lora)
        generator = TimedGenerator(model)
        print(
            f"model {generator.model_name} on {model.device} loaded in "
            f"{time.monotonic() - began:.1f} s; max_new_tokens "
            f"{settings.generation.max_new_tokens}, temperature {settings.generation.temperature}"
        )
        core = await build_core(
            settings, generator=generator, model_dir=model.model_dir, progress=False
        )
        production = TelegramSettings()  # pacing and global limits as deployed
        try:
            async with FakeTelegram() as fake:
                telegram = bot_settings(
                    fake,
                    edit_interval_s=production.edit_interval_s,
                    max_requests_per_second=production.max_requests_per_second,
                    max_requests_per_minute_per_group=production.max_requests_per_minute_per_group,
                )
                async with running(TelegramAdapter(core.service, telegram)):
                    await sequential(fake, generator, args.messages, args.timeout)
                    await crowd(fake, core, generator, args.users, args.timeout)
                edits = len(fake.calls_to("editMessageText"))
                print(f"Bot API calls: {len(fake.calls)}, of which editMessageText {edits}")
        finally:
            await core.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=8, help="sequential messages timed")
    parser.add_argument("--users", type=int, default=50, help="users writing at once")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the configured one")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per reply, at most")
    asyncio.run(main(parser.parse_args()))
