"""``selftune trainer`` as a real process (its trainer child is tests/support/fake_trainer.py):
it takes the run a serving core queued, the core sees the new version and swaps it in; killed
with SIGKILL half-way and started again, the run is retried and published exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.app import Core
from bot.generation import ScriptedGenerator
from bot.settings import Settings, load_settings
from bot.types import Incoming, RunStatus, Vote
from tests.support.records import rated, say
from tests.support.trainers import FakeTrainer, trainer_core

ROOT = Path(__file__).resolve().parents[2]
ME = Incoming("console", "local", "local", "Ann", "")
pytestmark = pytest.mark.slow


def _config(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")  # the fake trainer loads nothing
    config = tmp_path / "selftune.toml"
    config.write_text(
        f"""data_dir = "{tmp_path / "data"}"
[model]
name = "{model}"
[training]
runner = "queue"
poll_s = 0.2
heartbeat_s = 0.5
stale_after_s = 2.0
[gate]
enabled = false
""",
        encoding="utf-8",
    )
    return config


def _worker(config: Path, hold_s: float, *args: str) -> subprocess.Popen[bytes]:
    """``selftune trainer`` with the fake trainer; its output goes to ``worker-N.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFTUNE_")}
    env["FAKE_TRAINER_HOLD_S"] = str(hold_s)
    log = config.with_name(f"worker-{len(list(config.parent.glob('worker-*')))}.log")
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.trainer_worker", "--config", str(config), *args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _processes_naming(path: Path) -> list[int]:
    """The processes whose command line names something under ``path`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(path).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # it ended meanwhile
            continue
    return found


def _logs(config: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(config.parent.glob("worker-*")))


async def _until(check: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _queued_core(config: Path) -> tuple[Settings, Core]:
    settings, _ = load_settings(config, {})
    core = await trainer_core(settings, FakeTrainer())
    await rated(core, ME, "hello", Vote.UP)
    assert (await say(core, ME, "/finetune")).text.startswith("Queued as run #1")
    return settings, core


async def test_the_worker_killed_mid_run_and_restarted_publishes_once(tmp_path: Path) -> None:
    config = _config(tmp_path)
    settings, core = await _queued_core(config)
    adapters = settings.adapters_dir
    try:
        first = _worker(config, 60.0)
        try:
            await _until(lambda: any(adapters.glob("*.partial")))
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        # Its trainer child died with it (the kernel's parent-death signal): no orphan goes
        # on writing an adapter.
        await _until(lambda: not _processes_naming(settings.data_dir), 10.0)
        running = await core.repo.runs.pending()
        assert running is not None and running.status is RunStatus.RUNNING
        assert any(adapters.glob("*.partial"))  # what the killed run left half-written
        second = _worker(config, 0.0, "--once")
        assert second.wait(60) == 0, _logs(config)
        [run] = await core.repo.runs.recent()
        assert run.status is RunStatus.SUCCEEDED and run.attempts == 2, (run, _logs(config))
        assert [v.version for v in await core.repo.adapters.all()] == [1]
        assert sorted(p.name for p in adapters.iterdir()) == ["v0001"]  # nothing partial
        await core.watcher.tick()
        assert core.versions.current == 1
        assert isinstance(core.generator, ScriptedGenerator)
        assert core.generator.swaps[-1] == adapters / "v0001"
    finally:
        await core.aclose()


async def test_sigterm_stops_the_worker_and_requeues_its_run(tmp_path: Path) -> None:
    config = _config(tmp_path)
    settings, core = await _queued_core(config)
    try:
        worker = _worker(config, 60.0)
        await _until(lambda: any(settings.adapters_dir.glob("*.partial")))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, _logs(config)
        pending = await core.repo.runs.pending()
        assert pending is not None and pending.status is RunStatus.QUEUED
        assert not any(settings.adapters_dir.iterdir())
    finally:
        await core.aclose()
