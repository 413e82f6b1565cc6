"""Three serving processes, one PostgreSQL database: Telegram in webhook mode behind a
round-robin load balancer answers 200 users, every message exactly once and each chat in order,
also when one of the three processes is killed mid-run.

Real ``python -m bot.cli run`` processes, each listening on its own port with the same webhook
URL (the balancer's); the fake Telegram POSTs each update there (a chat's updates one after
another, again on an error status), the balancer skips a backend that does not answer, and a
fake OpenAI-style server generates (an echo of the message, so replies can be matched).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_server import Balancer, FakeTelegram
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
USERS = 200
PROCESSES = 3
SECRET = "multi-process-secret"


class Server:
    """One ``python -m bot.cli run`` process, its output in a log file."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config, self.env, self.log = config, env, log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        with self.log.open("a") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "--config", str(self.config), "run",
                cwd=ROOT, env=env, stdout=out, stderr=out,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.kill()
            await self.process.wait()


async def fresh_database(server_url: str) -> str:
    name = f"selftune_multi_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return str(make_url(server_url).set(database=name).render_as_string(hide_password=False))


@pytest.fixture
async def database(postgres_server: str) -> str:
    return await fresh_database(postgres_server)


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(delay_s=0.005) as server:
        yield server


def servers(
    tmp_path: Path, tg: FakeTelegram, model: FakeOpenAI, model_dir: Path, db: str, hook: str
) -> tuple[list[Server], list[int]]:
    """Three processes: own data dir and port, one database, one webhook URL."""
    ports = [free_port() for _ in range(PROCESSES)]
    made = []
    for i, port in enumerate(ports):
        config = tmp_path / f"selftune-{i}.toml"
        config.write_text(
            f'data_dir = "{tmp_path / f"data-{i}"}"\n'
            f'[database]\nurl = "{db}"\n'
            f'[model]\nname = "{model_dir}"\n'
            f'[backend]\nkind = "openai"\nbase_url = "{model.base_url}"\ntoken_count = "server"\n'
            f'[telegram]\nmode = "webhook"\nwebhook_url = "{hook}"\nlisten = "127.0.0.1"\n'
            f"port = {port}\nedit_interval_s = 0.2\nmax_requests_per_second = 0\n"
        )
        env = {
            "TELEGRAM_BOT_TOKEN": tg.token,
            "SELFTUNE_TELEGRAM__BASE_URL": tg.base_url,
            "SELFTUNE_TELEGRAM__BASE_FILE_URL": tg.base_file_url,
            "SELFTUNE_TELEGRAM__SECRET_TOKEN": SECRET,
        }
        made.append(Server(config, env, tmp_path / f"server-{i}.log"))
    return made, ports


async def until(
    condition: Callable[[], bool], within: float, what: str, procs: list[Server]
) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(p.log.read_text(errors="replace")[-1500:] for p in procs)
            raise AssertionError(f"waited in vain for {what}:\n{logs}")
        await asyncio.sleep(0.25)  # the fakes share this process: leave them the CPU


def answers(tg: FakeTelegram, chat_id: int) -> list[str]:
    """The chat's final replies (the bot's messages carrying 👍/👎), oldest first."""
    return [
        str(m.get("text", ""))
        for m in tg.bot_messages(chat_id)
        if "rate:" in str(m.get("reply_markup", ""))
    ]


def sent_by(i: int) -> int:
    """How many messages user number ``i`` sends: every fourth sends three."""
    return 3 if i % 4 == 0 else 1


async def test_three_webhook_processes_answer_200_users_once_and_in_order(
    tmp_path: Path, model: FakeOpenAI, tiny_model_dir: Path, database: str
) -> None:
    async with FakeTelegram() as tg:
        tg.webhook_retry_s = 0.1
        procs: list[Server] = []
        try:
            started = time.monotonic()
            async with Balancer([]) as lb:
                procs, ports = servers(
                    tmp_path, tg, model, tiny_model_dir, database, lb.url + "/hook"
                )
                lb.backends[:] = [f"http://127.0.0.1:{p}" for p in ports]
                await asyncio.gather(*(p.start() for p in procs))
                ready = lambda: len(tg.calls_to("setWebhook")) >= PROCESSES  # noqa: E731
                await until(ready, 60, "three processes serving", procs)
                startup = time.monotonic() - started
                expected = await _send_and_kill(tg, procs)
                total = sum(len(texts) for texts in expected.values())

                def everyone() -> bool:
                    if len(tg.finals()) < total:  # cheap first: leave the fakes the CPU
                        return False
                    return all(len(answers(tg, c)) >= len(t) for c, t in expected.items())

                await until(everyone, 60, "every message answered", procs)
                await asyncio.sleep(1.5)  # anything answered twice would show by now
                served = {backend for backend, status in lb.forwarded if status == 200}
            elapsed = time.monotonic() - started - startup
        finally:
            await asyncio.gather(*(p.stop() for p in procs))
        _check(tg, expected, served, (startup, elapsed))


async def _send_and_kill(tg: FakeTelegram, procs: list[Server]) -> dict[int, list[str]]:
    """Three rounds of messages; the second process is killed once some replies are out."""
    users = [tg.user(7000 + i, f"User{i}") for i in range(USERS)]
    expected: dict[int, list[str]] = {u["id"]: [] for u in users}
    for round_ in range(3):
        for i, user in enumerate(users):
            if round_ < sent_by(i):
                words = f"message {round_} from {user['id']}"
                expected[user["id"]].append(words)
                tg.push_text(tg.private_chat(user), user, words)
        if round_ == 0:
            await until(lambda: len(tg.finals()) >= USERS // 4, 60, "some replies", procs)
            procs[1].kill()  # mid-run: some of its chats streaming, some updates stored only
    return expected


def _check(
    tg: FakeTelegram,
    expected: dict[int, list[str]],
    served: set[str],
    seconds: tuple[float, float],
) -> None:
    lost = twice = out_of_order = 0
    for chat, texts in expected.items():
        got = answers(tg, chat)
        lost += sum(1 for t in texts if not any(a.endswith(t) for a in got))
        twice += max(0, len(got) - len(texts))
        order = [next((i for i, t in enumerate(texts) if a.endswith(t)), -1) for a in got]
        out_of_order += order != sorted(order)
    messages = sum(len(t) for t in expected.values())
    print(
        f"\n{PROCESSES} webhook processes on PostgreSQL, {USERS} users, {messages} messages, one "
        f"process SIGKILLed mid-run: lost {lost}, answered twice {twice}, chats out of order "
        f"{out_of_order}; {len(served)} processes answered POSTs; start-up {seconds[0]:.1f} s, "
        f"answering {seconds[1]:.1f} s"
    )
    assert (lost, twice, out_of_order) == (0, 0, 0)
    assert len(served) == PROCESSES  # the balancer spread the updates over all three
