"""Discord sharded over two processes: two real ``python -m bot.cli run`` processes on the fake
Discord (and a fake OpenAI-style model server), one database, ``discord.shard_count = 2`` and
``discord.shard_ids`` ``[0]`` and ``[1]``.

Users write in guilds on both shards and in DMs. Every message is answered exactly once, by the
process that owns its shard (a guild's: ``(guild_id >> 22) % 2``; a DM's: shard 0): each process
talks to the fake through its own REST base (``FakeDiscord.api_base_for``), so every answer's
POST says which process made it. Each process has its own data dir (the instance lock is per
data dir) and the same ``database.url``; the second starts once the first has migrated it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from tests.e2e.test_crash import Bot, bot_process, until, write_config
from tests.fakes.discord_server import FakeDiscord, FakeUser, Json
from tests.fakes.openai_server import FakeOpenAI

USERS = 12  # each writes in a guild on shard 0, one on shard 1, and by DM


@contextlib.asynccontextmanager
async def shard_process(
    tmp_path: Path, config: Path, fake: FakeDiscord, db_url: str, shard: int
) -> AsyncIterator[Bot]:
    """The bot serving ``shard`` of 2, started, with its gateway session ready."""
    data = tmp_path / f"data-{shard}"
    env = {
        "SELFTUNE_DATA_DIR": str(data),
        "SELFTUNE_DATABASE__URL": db_url,
        "DISCORD_BOT_TOKEN": fake.token,
        "SELFTUNE_DISCORD__API_BASE": fake.api_base_for(f"shard{shard}"),
        "SELFTUNE_DISCORD__GATEWAY_URL": fake.gateway_url,
        "SELFTUNE_DISCORD__GUILD_READY_TIMEOUT_S": "0.05",
        "SELFTUNE_DISCORD__SHARD_COUNT": "2",
        "SELFTUNE_DISCORD__SHARD_IDS": json.dumps([shard]),
    }
    async with bot_process(config, env, tmp_path / f"bot-{shard}.log") as bot:
        await bot.start()
        await until(lambda: (shard, 2) in fake.identify_shards, 90, f"shard {shard}", bot)
        log = data / "logs" / "selftune.log"
        ready = lambda: log.exists() and "connected to Discord" in log.read_text()  # noqa: E731
        await until(ready, 30, f"shard {shard} ready", bot)
        yield bot


def answers(fake: FakeDiscord, asked: Json) -> list[str]:
    """Which process (``shard0``, ``shard1``) posted each final reply (with 👍/👎) to ``asked``."""
    return [
        fake.posted_via.get(int(m["id"]), "?")
        for m in fake.messages.values()
        if m["author"]["id"] == str(fake.bot.id)
        and "rate:" in str(m["components"])
        and str(m.get("message_reference", {}).get("message_id")) == asked["id"]
    ]


def unanswered(fake: FakeDiscord, expected: list[tuple[Json, str]]) -> str:
    """For a failure: the messages without a final reply, and what the bot posted to them."""
    lines = []
    for asked, owner in expected:
        if answers(fake, asked):
            continue
        posted = [
            (fake.posted_via.get(int(m["id"]), "?"), m["content"][:40], bool(m["components"]))
            for m in fake.messages.values()
            if str(m.get("message_reference", {}).get("message_id")) == asked["id"]
        ]
        lines.append(f"{asked['content']!r} for {owner}: {posted}")
    return f"{len(lines)} unanswered:\n" + "\n".join(lines)


async def test_two_processes_answer_each_message_once_on_the_shard_that_owns_it(
    tmp_path: Path, tiny_model_dir: Path, db_url: str
) -> None:
    async with FakeOpenAI(delay_s=0.01) as model, FakeDiscord() as fake:
        guilds = {shard: fake.add_guild((shard, 2))[0] for shard in (0, 1)}
        # A channel per user and guild: Discord's 5 edits per 5 s in a channel is the streaming
        # pacer's business (tests/adapters/discord/test_messages.py), not this test's.
        channels = {(s, i): fake.add_channel(g) for s, g in guilds.items() for i in range(USERS)}
        config = write_config(tmp_path, model, tiny_model_dir, "discord", 1.1)
        async with (
            shard_process(tmp_path, config, fake, db_url, 0) as first,
            shard_process(tmp_path, config, fake, db_url, 1) as second,
        ):
            expected: list[tuple[Json, str]] = []  # (a user's message, the process to answer)
            for i in range(USERS):
                user = FakeUser(fake.new_id(), f"user{i}")
                for shard in guilds:
                    channel = channels[shard, i]
                    said = await fake.user_says(
                        user, f"hi {i}", channel_id=channel, mention_bot=True
                    )
                    expected.append((said, f"shard{shard}"))
                expected.append((await fake.user_says(user, f"hi {i} by DM"), "shard0"))
            done = lambda: all(answers(fake, m) for m, _ in expected)  # noqa: E731
            try:
                await until(done, 120, "every message answered", first)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{unanswered(fake, expected)}") from None
            await asyncio.sleep(1.0)  # anything answered twice would show by now
            for bot in (first, second):
                assert bot.process is not None and bot.process.returncode is None, bot.log()
        got = [(m["content"], owner, answers(fake, m)) for m, owner in expected]
    by = Counter(owner for _, owner, _ in got)
    wrong = [g for g in got if g[2] != [g[1]]]  # answered twice, by the wrong process, or not
    print(
        f"\nDiscord, 2 processes x 1 shard of 2, {len(got)} messages (to answer: {dict(by)}): "
        f"answered once by their shard's process {len(got) - len(wrong)}, otherwise {len(wrong)}"
    )
    assert wrong == []
