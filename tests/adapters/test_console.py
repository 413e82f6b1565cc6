"""The console adapter over the real ChatService: piped input, bad bytes, end of input."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path

from adapters.console import ConsoleAdapter
from bot.app import Core
from bot.settings import Settings
from tests.support.records import Script
from tests.support.trainers import FakeTrainer, trainer_core


async def chat(core: Core, data: bytes, out: io.StringIO | None = None) -> str:
    out = out if out is not None else io.StringIO()
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


class _Terminal(io.StringIO):
    """Standard output that says it is a terminal, so the console draws its prompt."""

    def isatty(self) -> bool:
        return True


class _Keyboard(io.BytesIO):
    """Standard input at a terminal: each line waits until the test lets it through."""

    def __init__(self, lines: list[bytes]) -> None:
        super().__init__()
        self._lines = lines
        self.go = threading.Event()

    def isatty(self) -> bool:
        return True

    def readline(self, _size: int | None = -1) -> bytes:
        self.go.wait(5)
        self.go.clear()
        return self._lines.pop(0) if self._lines else b""


async def test_a_notice_after_the_prompt_redraws_it(core: Core) -> None:
    """Training progress arrives while "you> " waits: it takes the prompt's line and the
    prompt is drawn again below it, so the next input still has one."""
    out, keys = _Terminal(), _Keyboard([b"hi\n"])
    adapter = ConsoleAdapter(core.service, stdin=keys, stdout=out)
    running = asyncio.create_task(adapter.run())
    await _until(lambda: out.getvalue().endswith("you> "))
    await adapter.send("console:local", "Training: step 1/2 (50%), loss 1.1")
    assert out.getvalue().endswith("you> \r\x1b[K[Training: step 1/2 (50%), loss 1.1]\nyou> ")
    keys.go.set()  # "hi"
    await _until(lambda: "You said: hi" in out.getvalue() and out.getvalue().endswith("you> "))
    keys.go.set()  # end of input
    await asyncio.wait_for(running, 5)


async def test_a_notice_while_not_at_the_prompt_is_just_printed(core: Core) -> None:
    out = _Terminal()
    adapter = ConsoleAdapter(core.service, stdin=_Keyboard([]), stdout=out)
    await adapter.send("console:local", "done")
    assert out.getvalue() == "[done]\n"  # nothing to redraw: no prompt was showing


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_whoami_tells_the_user_key_to_put_in_admins(core: Core) -> None:
    output = await chat(core, b"/whoami\n")
    assert "Your user key: console:local (you)" in output
    assert "This chat: console:local" in output and "You are an admin here." in output


async def test_first_hour_transcript_with_a_young_bot(settings: Settings) -> None:
    """Hello, a rating, /finetune, /finetune again: the chat shows only the chat (no log line),
    the counts agree, and the second /finetune says there is nothing new."""
    core = await trainer_core(settings, FakeTrainer())
    try:
        screen = io.StringIO()
        await chat(core, b"Hello!\n+\n/finetune\n", screen)
        await core.finetuner.wait()  # its notices reach the screen meanwhile
        output = await chat(core, b"/finetune\n/adapters\n", screen)
    finally:
        await core.aclose()
    assert "INFO" not in output and "WARNING" not in output
    assert "1 ratings → training on 1 👍, held out 0 👍 / 0 👎" in output
    assert "about 3 more rated replies" in output
    assert "[Adapter v1 is ready but not serving: trained, not yet proven" in output
    assert "No new ratings since run #1 trained v1" in output
    assert "  v1 [ready]" in output and "SFT on 1 exchanges" in output
    assert "▶ base model (version 0)\n▶ = serving now" in output


async def test_again_writes_another_reply_and_a_vote_makes_a_pair(
    core: Core, script: Script
) -> None:
    out = io.StringIO()
    adapter = ConsoleAdapter(core.service, stdin=io.BytesIO(b""), stdout=out)
    script.text = "Lyon"
    await adapter.handle_line(b"Capital of France?\n")
    assert "[r or /again: another reply" in out.getvalue()
    script.text = "Paris"
    await adapter.handle_line(b"r\n")
    await adapter.handle_line(b"+\n")
    assert "bot> Paris\n" in out.getvalue() and "bot> Thanks! Rated 👍." in out.getvalue()
    [pair] = await core.repo.training.pairs()
    assert (pair.chosen.completion, pair.rejected.completion) == ("Paris", "Lyon")
    script.text = "Marseille"
    await adapter.handle_line(b"/again\n")
    assert "bot> Marseille\n" in out.getvalue()
    assert (await core.repo.signals.counts()).regenerations == 2


async def test_again_before_any_reply_says_so(core: Core) -> None:
    assert "bot: There is no reply of mine to write again yet." in await chat(core, b"r\n")


async def test_better_right_after_a_reply_is_stored(core: Core, script: Script) -> None:
    script.text = "Lyon"
    output = await chat(core, b"Capital of France?\n/better Paris\n/better\n")
    assert "Thanks — I'll learn from that" in output
    assert "Write the reply you wanted after /better" in output
    [liked] = await core.repo.training.rated()
    assert (liked.completion, liked.label, liked.user_key) == ("Paris", True, "console:local")
    [pair] = await core.repo.training.pairs()
    assert (pair.chosen.completion, pair.rejected.completion) == ("Paris", "Lyon")
