"""``selftune export --pairs``: the preference pairs in TRL's preference format."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from bot.app import build_core
from bot.cli import main
from bot.generation import ScriptedGenerator
from bot.settings import Settings
from bot.types import Incoming
from tests.support.records import say

ME = Incoming("console", "local", "local", "Ann", "")


async def _seed(settings: Settings) -> None:
    core = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    try:
        await say(core, ME, "Capital of France?")
        await say(core, ME, "/better Paris")
    finally:
        await core.aclose()


def test_export_pairs_writes_trl_preference_rows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in os.environ:  # the machine's own settings must not leak into this run
        if name.startswith(("SELFTUNE_", "TELEGRAM_BOT", "DISCORD_BOT")):
            monkeypatch.delenv(name)
    data = tmp_path / "data"
    monkeypatch.setenv("SELFTUNE_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    asyncio.run(_seed(Settings(data_dir=data)))
    assert main(["export", "--pairs"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [
        {
            "prompt": [
                {"role": "system", "content": Settings().chat.system_prompt},
                {"role": "user", "content": "Capital of France?"},
            ],
            "chosen": [{"role": "assistant", "content": "Paris"}],
            "rejected": [{"role": "assistant", "content": "You said: Capital of France?"}],
        }
    ]
    assert "exported 1 preference pair(s)" in err
    # Without --pairs: the correction is a liked completion (TRL's KTO format).
    assert main(["export"]) == 0
    [liked] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert liked["completion"] == [{"role": "assistant", "content": "Paris"}] and liked["label"]
