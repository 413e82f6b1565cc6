"""The console adapter over the real ChatService: piped input, bad bytes, end of input."""

from __future__ import annotations

import io
from pathlib import Path

from adapters.console import ConsoleAdapter
from bot.app import Core


async def chat(core: Core, data: bytes) -> str:
    out = io.StringIO()
    adapter = ConsoleAdapter(
        core.service,
        charts_dir=core.settings.data_dir / "charts",
        stdin=io.BytesIO(data),
        stdout=out,
    )
    core.outbox.register(adapter.platform, adapter.send)
    await adapter.run()
    return out.getvalue()


async def test_piped_conversation_with_a_rating(core: Core) -> None:
    output = await chat(core, b"Hello!\n/good\n")
    assert "bot> You said: Hello!\n" in output
    assert "[reply #1 — rate it: + or /good, - or /bad]" in output
    assert "bot> Thanks! Rated 👍." in output
    rated = await core.repo.training.rated()
    assert [(r.completion, r.label, r.user_key) for r in rated] == [
        ("You said: Hello!", True, "console:local")
    ]


async def test_shortcuts_and_commands(core: Core) -> None:
    output = await chat(core, b"hi\n-\n/help\n")
    assert "Changed" not in output and "Rated 👎" in output
    assert "/finetune — Fine-tune on the rated replies now (admin)" in output


async def test_bad_input_is_answered_and_nothing_is_lost(core: Core) -> None:
    data = b"\n" + b"caf\xe9 \xff ok\n" + b"\x00\x01\n" + b"x " * 60_000 + b"\n/nope\nstill here\n"
    output = await chat(core, data)
    assert output.count("Empty message") == 2
    assert "not valid UTF-8" in output and "You said: caf� � ok" in output
    assert "too long for me" in output
    assert "Unknown command /nope" in output
    assert "You said: still here" in output
    stored = [m.content for m in await core.repo.history("console:local", 20) if m.role == "user"]
    assert stored[0] == "caf� � ok" and stored[1].startswith("x x x") and stored[2] == "still here"


async def test_input_without_a_final_newline(core: Core) -> None:
    output = await chat(core, b"last words")
    assert "You said: last words" in output


async def test_notices_from_the_core_are_printed(core: Core) -> None:
    out = io.StringIO()
    adapter = ConsoleAdapter(core.service, stdin=io.BytesIO(b""), stdout=out)
    await adapter.send("console:local", "Training: step 1/4 (25%)")
    assert "[Training: step 1/4 (25%)]" in out.getvalue()


async def test_stats_chart_is_saved_as_a_file(core: Core) -> None:
    output = await chat(core, b"hi\n+\n/stats\n")
    line = next(line for line in output.splitlines() if "chart saved to" in line)
    path = Path(line.split("chart saved to ", 1)[1].rstrip("]"))
    assert path.read_bytes().startswith(b"\x89PNG")
    assert path.parent == core.settings.data_dir / "charts"
    assert "base:    1 /    0" in output
