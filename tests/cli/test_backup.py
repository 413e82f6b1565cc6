"""``selftune db backup PATH``: taken while 20 users chat, it restores to a database with every
message stored when it was taken; the adapters are copied beside it."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.app import Core, build_core
from bot.cli import main
from bot.cli.backup import backup, postgres_instructions
from bot.generation import ScriptedGenerator
from bot.settings import Settings
from bot.types import Incoming
from tests.support.records import say

USERS = 20
MESSAGES = 6


def message_ids(database: Path) -> set[int]:
    with sqlite3.connect(database) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM messages")}


async def chatting(core: Core, user: int) -> None:
    who = Incoming("telegram", str(5000 + user), str(5000 + user), f"U{user}", "")
    for n in range(MESSAGES):
        await say(core, who, f"message {n} from user {user}, a few words long")


async def check_restore(settings: Settings, target: Path, tmp_path: Path, copied: set[int]) -> None:
    """Restore as the README says (into a data dir, then start): every copied message is there."""
    restored = settings.model_copy(update={"data_dir": tmp_path / "restored"})
    restored.adapters_dir.parent.mkdir(parents=True)
    shutil.copy(target / "selftune.db", restored.data_dir / "selftune.db")
    shutil.copytree(target / "adapters", restored.adapters_dir)
    core = await build_core(restored, generator=ScriptedGenerator(), progress=False)
    try:
        counts = await core.repo.stats.counts()
        with sqlite3.connect(restored.data_dir / "selftune.db") as connection:
            check = connection.execute("PRAGMA integrity_check").fetchone()[0]
            orphans = connection.execute(
                "SELECT count(*) FROM exchanges e LEFT JOIN messages m "
                "ON m.id = e.request_message_id WHERE m.id IS NULL"
            ).fetchone()[0]
        assert check == "ok" and orphans == 0
        assert message_ids(restored.data_dir / "selftune.db") == copied
        assert counts.exchanges > 0  # replies finished by then, with their messages
    finally:
        await core.aclose()


async def test_a_backup_taken_while_20_users_chat_restores_every_stored_message(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    core = await build_core(
        settings, generator=ScriptedGenerator(delay_s=0.002), progress=False, lock=False
    )
    (settings.adapters_dir / "v0001").mkdir(parents=True)
    (settings.adapters_dir / "v0001" / "adapter_model.safetensors").write_bytes(b"weights")
    (settings.adapters_dir / "v0002.partial").mkdir()  # a trainer still writing: not copied
    database = settings.data_dir / "selftune.db"
    target = tmp_path / "backup"
    try:
        users = [asyncio.create_task(chatting(core, user)) for user in range(USERS)]
        for _ in range(1000):  # until they are mid-conversation
            if len(message_ids(database)) >= USERS * 2:
                break
            await asyncio.sleep(0.01)
        before = message_ids(database)
        assert await backup(settings, target) == 0
        still_chatting = sum(not task.done() for task in users)
        await asyncio.gather(*users)
        after = message_ids(database)
    finally:
        await core.aclose()
    assert still_chatting > 0  # the backup really ran while they chatted
    copied = message_ids(target / "selftune.db")
    assert before <= copied <= after and len(after) == USERS * MESSAGES * 2
    assert "backed up" in capsys.readouterr().out
    assert sorted(p.name for p in (target / "adapters").iterdir()) == ["v0001"]

    await check_restore(settings, target, tmp_path, copied)


def test_the_command_refuses_a_folder_in_use(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFTUNE_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("SELFTUNE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "backup", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "selftune.db").is_file()
    assert main(["db", "backup", str(tmp_path / "one")]) == 1  # never over an older backup


def test_postgres_gets_the_commands_to_run(settings: Settings, tmp_path: Path) -> None:
    database = settings.database.model_copy(
        update={"url": "postgresql+asyncpg://bot:hunter2@db:5432/selftune"}
    )
    text = postgres_instructions(settings.model_copy(update={"database": database}), tmp_path)
    assert "pg_dump --format=custom" in text and "pg_restore" in text
    assert "postgresql://bot@db:5432/selftune" in text and "hunter2" not in text
