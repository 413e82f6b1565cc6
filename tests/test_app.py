"""Start-up, the composition root and the `selftune` command: data dir, one process per data
dir, restart, adapters from the platform table, serving until the input ends or SIGTERM, CLI."""

from __future__ import annotations

import ast
import asyncio
import importlib
import io
import json
import os
import signal
import stat
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr

from adapters.base import Adapter
from adapters.console import ConsoleAdapter
from bot import app
from bot.app import Core, build_core, make_adapters, serve_core
from bot.cli import main
from bot.errors import StartupError
from bot.generation import ScriptedGenerator
from bot.settings import PLATFORMS, DiscordSettings, Platform, Settings, TelegramSettings
from bot.types import Incoming, Vote
from migrations import head_revision
from tests.support.records import add_version, rated, say
from tests.support.trainers import GOOD, FakeTrainer, trainer_core

ME = Incoming("console", "local", "local", "Ann", "")


async def test_restart_keeps_history_ratings_and_the_active_adapter(settings: Settings) -> None:
    first = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    reply = await say(first, ME, "remember this")
    assert reply.exchange_id is not None
    await first.service.rate(reply.exchange_id, ME.user_key, Vote.UP)
    adapter_dir = settings.adapters_dir / "v0001"
    adapter_dir.mkdir(parents=True)
    await add_version(first.repo, adapter_dir, exchange_ids=[reply.exchange_id], duration_s=1.0)
    await first.versions.activate(1)
    await first.aclose()

    generator = ScriptedGenerator()
    second = await build_core(settings, generator=generator, progress=False)
    try:
        assert generator.active_lora == adapter_dir  # swapped in at start
        assert second.versions.current == 1
        history = await second.repo.history("console:local", 10)
        assert [m.content for m in history] == ["remember this", "You said: remember this"]
        assert [r.label for r in await second.repo.training.rated()] == [True]
        again = await say(second, ME, "and now?")
        assert again.adapter_version == 1 and "[v0001]" in again.text
    finally:
        await second.aclose()


async def test_a_second_process_on_the_same_data_dir_is_refused(settings: Settings) -> None:
    first = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    try:
        with pytest.raises(StartupError, match=f"pid {os.getpid()}.*already serving"):
            await build_core(settings, generator=ScriptedGenerator(), progress=False)
        # Still serving after the refusal.
        assert (await say(first, ME, "ok?")).rateable
    finally:
        await first.aclose()
    again = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    await again.aclose()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
async def test_unwritable_data_dir_is_explained(tmp_path: Path) -> None:  # pragma: no cover
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    settings = Settings(data_dir=locked / "data")
    with pytest.raises(StartupError, match="not usable"):
        await build_core(settings, generator=ScriptedGenerator(), progress=False)


async def test_data_dir_that_is_a_file_is_explained(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir", encoding="utf-8")
    with pytest.raises(StartupError, match=r"data dir .*file.* is not usable"):
        await build_core(Settings(data_dir=blocker), generator=ScriptedGenerator(), progress=False)


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for name in os.environ:  # the machine's own settings must not leak into these runs
        if name.startswith(("SELFTUNE_", "TELEGRAM_BOT", "DISCORD_BOT")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SELFTUNE_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    return data


def test_cli_db_adapters_export(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _env(monkeypatch, tmp_path)
    assert main(["db", "upgrade"]) == 0
    assert f"database at revision {head_revision()} (was empty)" in capsys.readouterr().out
    assert main(["db", "current"]) == 0
    head = head_revision()
    assert f"database revision {head}; latest {head}" in capsys.readouterr().out
    assert main(["adapters"]) == 0
    assert "▶ base model (version 0)" in capsys.readouterr().out  # the chat's mark too
    assert main(["adapters", "rollback"]) == 1
    assert "Nothing to roll back" in capsys.readouterr().err
    assert main(["adapters", "activate", "3"]) == 1
    assert "There is no adapter v3" in capsys.readouterr().err
    assert main(["export", "-o", str(tmp_path / "out.jsonl")]) == 0
    assert "exported 0 rated exchange(s)" in capsys.readouterr().err
    assert (data / "selftune.db").exists()


async def _seed(settings: Settings) -> None:
    core = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    reply = await say(core, ME, "export me")
    assert reply.exchange_id is not None
    await core.service.rate(reply.exchange_id, ME.user_key, Vote.DOWN)
    await core.aclose()


def test_cli_export_is_kto_jsonl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    data = _env(monkeypatch, tmp_path)
    asyncio.run(_seed(Settings(data_dir=data)))
    assert main(["export"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {
            "prompt": [
                {"role": "system", "content": Settings().chat.system_prompt},
                {"role": "user", "content": "export me"},
            ],
            "completion": [{"role": "assistant", "content": "You said: export me"}],
            "label": False,
        }
    ]


def test_cli_train_with_nothing_rated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, tmp_path)
    monkeypatch.setenv("SELFTUNE_MODEL__NAME", str(tmp_path / "no-model"))
    assert main(["train", "--quiet"]) == 1
    assert "Nothing to fine-tune on yet: 0 liked replies" in capsys.readouterr().err


def test_cli_config_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n", encoding="utf-8")
    assert main(["--config", str(bad), "db", "current"]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    monkeypatch.setenv("SELFTUNE_GENERATION__TEMPERATURE", "hot")
    assert main(["db", "current"]) == 2
    assert "SELFTUNE_GENERATION__TEMPERATURE" in capsys.readouterr().err


def test_adapter_startup_errors_are_found_inside_task_groups() -> None:
    from bot.cli import _startup_error

    inner = StartupError("enable the Message Content Intent")
    nested = ExceptionGroup("outer", [ValueError("x"), ExceptionGroup("inner", [inner])])
    assert _startup_error(nested) is inner
    assert _startup_error(ValueError("x")) is None


def test_maintenance_commands_start_up_without_the_composition_root() -> None:
    source = Path(__file__).resolve().parents[1] / "bot" / "cli" / "maintenance.py"
    imported = {
        node.module
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    assert "bot.startup" in imported and "bot.app" not in imported


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.name)
def test_the_platform_table_names_real_adapters(platform: Platform) -> None:
    module, _, name = platform.adapter.partition(":")
    adapter = getattr(importlib.import_module(module), name)
    assert adapter.platform == platform.name
    assert callable(adapter.send) and callable(adapter.run)
    # "dm": the outbox registers the adapter's send_private for messages to a user.
    assert callable(getattr(adapter, "send_private", None)) == (platform.private == "dm")


async def test_run_mode_serves_every_platform_with_a_token(settings: Settings) -> None:
    both = settings.model_copy(
        update={
            "telegram": TelegramSettings(token=SecretStr("123456:" + "A" * 30)),
            "discord": DiscordSettings(token=SecretStr("discord-token")),
        }
    )
    core = await build_core(both, generator=ScriptedGenerator(), progress=False)
    try:
        assert core.outbox.private_notifier("telegram:7") is not None  # the user's private chat
        assert core.outbox.private_notifier("discord:7") is None  # no DM sender yet
        adapters = make_adapters(core, "run")
        assert [a.platform for a in adapters] == [p.name for p in PLATFORMS]
        assert core.outbox.private_notifier("discord:7") is not None  # DMs, once built
        assert [a.platform for a in make_adapters(core, "chat")] == ["console"]
    finally:
        await core.aclose()


async def test_run_mode_without_tokens_is_the_console(core: Core) -> None:
    assert [a.platform for a in make_adapters(core, "run")] == ["console"]


ADMIN = Incoming("console", "local", "local", "Admin", "")


async def _trainable(settings: Settings, trainer: FakeTrainer) -> Core:
    """A core whose fine-tune passes the gate: 40 rated replies, a candidate better than GOOD."""
    gate = settings.gate.model_copy(update={"min_heldout": 4})
    core = await trainer_core(settings.model_copy(update={"gate": gate}), trainer)
    for i in range(40):
        who = Incoming("console", f"{100 + i}", f"{100 + i}", f"U{i}", "")
        await rated(core, who, f"message {i}", Vote.UP if i % 2 else Vote.DOWN)
    return core


class AsksToTrainThenEnds:
    """An adapter whose input ends right after the admin asked for a fine-tune."""

    platform = "console"

    def __init__(self, core: Core) -> None:
        self.core = core
        self.sent: list[str] = []

    async def run(self) -> None:
        started = await say(self.core, ADMIN, "/finetune")
        assert "Fine-tuning started" in started.text

    async def send(self, chat_key: str, text: str) -> None:
        self.sent.append(text)


async def test_serving_ends_after_a_running_finetune_and_its_verdict(settings: Settings) -> None:
    core = await _trainable(settings, FakeTrainer(candidate=GOOD | {"reward_margin": 0.5}))
    adapter = AsksToTrainThenEnds(core)
    core.outbox.register(adapter.platform, adapter.send)
    await serve_core(core, [adapter])
    assert any("Training: step" in text for text in adapter.sent)
    assert "passed the gate" in adapter.sent[-1]
    assert not core.finetuner.running


async def test_sigterm_stops_at_once_while_a_finetune_runs(settings: Settings) -> None:
    hold = asyncio.Event()  # the run never finishes by itself
    core = await _trainable(settings, FakeTrainer(hold=hold, candidate=GOOD))
    adapter = AsksToTrainThenEnds(core)
    core.outbox.register(adapter.platform, adapter.send)
    serving = asyncio.create_task(serve_core(core, [adapter]))
    for _ in range(500):
        if any("Training: step" in text for text in adapter.sent):
            break
        await asyncio.sleep(0.01)
    assert not serving.done() and core.finetuner.running
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 10)  # no exception: a clean stop
    assert not core.finetuner.running
    assert not any("passed the gate" in text for text in adapter.sent)


async def test_piped_finetune_in_the_console_prints_the_verdict(settings: Settings) -> None:
    core = await _trainable(settings, FakeTrainer(candidate=GOOD | {"reward_margin": 0.5}))
    out = io.StringIO()
    console = ConsoleAdapter(core.service, stdin=io.BytesIO(b"/finetune\n"), stdout=out)
    core.outbox.register(console.platform, console.send)
    await serve_core(core, [console])
    assert "Fine-tuning started" in out.getvalue()
    assert "passed the gate" in out.getvalue()


class RunsUntilStopped:
    """An adapter that serves until cancelled."""

    platform = "console"

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, chat_key: str, text: str) -> None:
        return None


async def test_a_process_that_lost_a_role_to_another_stops_with_an_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared database: the role guard finds this process no longer holds a role it serves
    (another process took it while its connection was down): it stops, saying why, rather than
    run a second schedule or poller. The role test on PostgreSQL is in
    tests/storage/test_coordination.py."""
    core = await _trainable(settings, FakeTrainer())
    coordination = type(core.repo.coordination)
    lost: set[str] = set()

    async def lost_roles(_self: Any) -> set[str]:
        return set(lost)

    monkeypatch.setattr(coordination, "shared", True)
    monkeypatch.setattr(coordination, "lost_roles", lost_roles)
    monkeypatch.setattr(app, "ROLE_CHECK_S", 0.01)
    core.roles = frozenset({"schedule", "console"})
    serving = asyncio.create_task(serve_core(core, [cast(Adapter, RunsUntilStopped())]))
    await asyncio.sleep(0.1)
    assert not serving.done()  # every role still held
    lost.add("schedule")
    with pytest.raises(StartupError, match="lost the roles schedule"):
        await asyncio.wait_for(serving, 5)
