"""Discord latency with the real default model: the real adapter against the fake Discord.

What a user sees, timed from the moment their message leaves the gateway:

- first visible text: the bot's first message in the channel (the first streamed draft);
- final reply: the post or edit that puts the 👍/👎 buttons on the answer.

First ``--messages`` DMs one after another (p50/p95), then ``--users`` users at once, each in
their own DM: how many were answered, how many exchanges were stored, and how long it took.

Run from the repository root:  python -m bench.discord_latency [--messages 8] [--users 50]
(``--temperature 0`` makes both paths write the same replies, so their times compare.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

from bench.common import PROMPTS, Timing, report, stored_pairs
from bot.app import Core, build_core
from bot.engine.generator import TransformersGenerator
from bot.settings import Settings
from bot.types import Draft, Incoming
from tests.fakes.discord_server import FakeDiscord, FakeUser, discord_settings, run_bot


def _channel_calls(fake: FakeDiscord, channel: int, since: float) -> list[tuple[float, bool]]:
    """(time, carries the rating buttons) of the bot's posts and edits in a channel."""
    prefix = f"channels/{channel}/messages"
    return [
        (call.at, bool(call.body.get("components")))
        for call in fake.calls
        if call.at >= since and call.path.startswith(prefix) and call.method in ("POST", "PATCH")
    ]


def timing(fake: FakeDiscord, channel: int, sent_at: float) -> Timing:
    calls = _channel_calls(fake, channel, sent_at)
    first = min((at for at, _ in calls), default=None)
    final = min((at for at, rated in calls if rated), default=None)
    return Timing(
        None if first is None else first - sent_at, None if final is None else final - sent_at
    )


async def ask(fake: FakeDiscord, user: FakeUser, prompt: str, within_s: float) -> Timing:
    """One user's DM, timed until its final reply (or ``within_s``)."""
    channel = fake.dm_channel(user)
    sent_at = time.monotonic()
    await fake.user_says(user, prompt)
    with contextlib.suppress(AssertionError):  # timed out: reported as unanswered
        await fake.wait_for(lambda: timing(fake, channel, sent_at).final_s, within_s)
    return timing(fake, channel, sent_at)


async def direct(core: Core, n: int, prompt: str) -> Timing:
    """The same question straight to the ChatService, no Discord: the model's own share."""
    incoming = Incoming("bench", f"direct{n}", f"direct{n}", "bench", prompt)
    sent_at, first = time.monotonic(), None
    async for item in core.service.respond(incoming):
        if first is None and (not isinstance(item, Draft) or item.text.strip()):
            first = time.monotonic() - sent_at
    return Timing(first, time.monotonic() - sent_at)


async def sequential(fake: FakeDiscord, core: Core, count: int, within_s: float) -> None:
    """Messages one after another, each asked through Discord and then straight to the core,
    so both see the same load on the machine; each from a new user, so that no history grows
    the prompt (the direct path has none either)."""
    warm = FakeUser(fake.new_id(), "warm-up")
    await ask(fake, warm, "Hi! This first message warms the model up.", within_s)
    timings, baseline = [], []
    for n in range(count):
        user = FakeUser(fake.new_id(), f"bench{n}")
        timings.append(await ask(fake, user, PROMPTS[n % len(PROMPTS)], within_s))
        baseline.append(await direct(core, n, PROMPTS[n % len(PROMPTS)]))
    report(f"{count} messages one after another via Discord", timings)
    report(f"the same {count} straight to the core (no Discord)", baseline)


async def crowd(fake: FakeDiscord, core: Core, count: int, within_s: float) -> None:
    users = [FakeUser(fake.new_id(), f"user{n}") for n in range(count)]
    began = time.monotonic()
    timings = await asyncio.gather(
        *(ask(fake, u, PROMPTS[n % len(PROMPTS)], within_s) for n, u in enumerate(users))
    )
    took = time.monotonic() - began
    answered = sum(t.final_s is not None for t in timings)
    stored = await stored_pairs(core.repo, (f"discord:{fake.dm_channel(u)}" for u in users))
    report(f"{count} users at once", timings)
    print(f"{count} users at once: answered {answered}, stored {stored}, {took:.1f} s in all")


def describe(settings: Settings, generator: TransformersGenerator, load_s: float) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average before: {load} on {os.cpu_count()} CPUs (other work slows the model)")
    print(
        f"model {generator.model_name} on {generator.device}, loaded in {load_s:.1f} s; "
        f"max_new_tokens {settings.generation.max_new_tokens}, "
        f"temperature {settings.generation.temperature}"
    )


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    env = {"SELFTUNE_CHAT__USER_MESSAGES_PER_MINUTE": "0"}
    if args.max_new_tokens:
        env["SELFTUNE_GENERATION__MAX_NEW_TOKENS"] = str(args.max_new_tokens)
    if args.temperature is not None:  # 0: greedy, the same reply both ways, for a fair pair
        env["SELFTUNE_GENERATION__TEMPERATURE"] = str(args.temperature)
    with tempfile.TemporaryDirectory() as data:
        async with FakeDiscord() as fake:
            settings = discord_settings(Path(data), fake, **env)
            began = time.monotonic()
            generator = await TransformersGenerator.load(settings.model, settings.lora)
            describe(settings, generator, time.monotonic() - began)
            core = await build_core(
                settings, generator=generator, model_dir=generator.model_dir, progress=False
            )
            try:
                async with run_bot(core.service, settings, fake):
                    await sequential(fake, core, args.messages, args.timeout)
                    await crowd(fake, core, args.users, args.timeout)
            finally:
                await core.aclose()
            print(f"edits refused by the fake's 5-per-5-s limit: {fake.rate_limited}")
            print(f"model engine: {generator.stats}")
            print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=8, help="sequential messages timed")
    parser.add_argument("--users", type=int, default=50, help="users writing at once")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the configured one")
    parser.add_argument("--temperature", type=float, help="default: the configured one")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per reply, at most")
    asyncio.run(main(parser.parse_args()))
