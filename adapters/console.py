"""The console chat: standard input line by line, replies streamed to standard output.

It goes through the same chat core as Telegram and Discord. It works without a terminal
(``printf 'Hello!\\n/good\\n' | selftune chat``) and ends at the end of the input (``serve()``
then waits for a fine-tuning run in progress before closing the core). After a reply, ``r`` (or
``/again``) asks for another one (🔄), printed below it: a terminal cannot rewrite what scrolled by.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TextIO

from adapters.base import ChatCore
from bot.types import Draft, Incoming, Reply, ReplyKind

PLATFORM = "console"
AGAIN = frozenset({"r", "/again"})  # 🔄: another reply to the last prompt
NOTHING_TO_REDO = "There is no reply of mine to write again yet."
MAX_LINE_BYTES = 1_000_000  # longer lines are read in pieces and answered as "too long"


class ConsoleAdapter:
    """Chat in the terminal as the local user ``console:local`` (an admin by default)."""

    platform = PLATFORM

    def __init__(
        self,
        service: ChatCore,
        *,
        charts_dir: Path | None = None,
        stdin: BinaryIO | None = None,
        stdout: TextIO | None = None,
        user_id: str = "local",
        user_name: str = "you",
    ) -> None:
        self._service = service
        # Where /stats charts are saved (the data dir's charts/ in production).
        self._charts = charts_dir or Path(tempfile.gettempdir()) / "selftune-charts"
        self._in = stdin if stdin is not None else sys.stdin.buffer
        self._out = stdout if stdout is not None else sys.stdout
        self._user_id = user_id
        self._user_name = user_name
        self._interactive = self._out.isatty() and self._in.isatty()
        self._write_lock = asyncio.Lock()
        self._count = 0
        self._at_prompt = False  # "you> " is the last thing on the screen, input pending
        self._last: int | None = None  # the exchange of the last reply shown (for 🔄)

    @property
    def chat_key(self) -> str:
        return f"{PLATFORM}:{self._user_id}"

    async def run(self) -> None:
        self._say("selftune console — type a message, /help for commands, Ctrl-D to quit.")
        loop = asyncio.get_running_loop()
        while True:
            self._prompt()
            raw = await loop.run_in_executor(None, self._in.readline, MAX_LINE_BYTES)
            self._at_prompt = False
            if not raw:
                break
            await self.handle_line(raw)

    async def handle_line(self, raw: bytes) -> None:
        """Answer one input line (bytes, as read): decode, then through the chat core."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "replace")
            self._say("(note: that line was not valid UTF-8; unreadable bytes became �)")
        if len(raw) >= MAX_LINE_BYTES and not raw.endswith(b"\n"):
            self._say(
                f"(that line is over {MAX_LINE_BYTES} bytes; reading the rest as another message)"
            )
        self._count += 1
        if text.strip() in AGAIN:
            await self._again()
            return
        incoming = Incoming(
            platform=PLATFORM,
            chat_id=self._user_id,
            user_id=self._user_id,
            user_name=self._user_name,
            text=text.rstrip("\r\n"),
            message_id=str(self._count),
        )
        await self._show(incoming)

    async def _again(self) -> None:
        """🔄: another reply to the prompt of the last one."""
        if self._last is None:
            async with self._write_lock:
                self._say("bot: " + NOTHING_TO_REDO)
            return
        items = self._service.regenerate(
            self._last, f"{PLATFORM}:{self._user_id}", chat_key=self.chat_key, platform=PLATFORM
        )
        await self._print(items)

    async def _show(self, incoming: Incoming) -> None:
        await self._print(self._service.respond(incoming))

    async def _print(self, items: AsyncIterator[Draft | Reply]) -> None:
        shown = ""  # what of the growing reply is already on the screen
        async with self._write_lock:
            async for item in items:
                if isinstance(item, Draft):
                    # Drafts only grow; print what is new since the last one.
                    self._out.write(("" if shown else "bot> ") + item.text[len(shown) :])
                    self._out.flush()
                    shown = item.text
                else:
                    self._final(item, shown)

    def _final(self, reply: Reply, shown: str) -> None:
        if not shown:
            self._out.write(self._prefix(reply) + reply.text + "\n")
        elif reply.kind is ReplyKind.ANSWER:
            self._out.write("\n")  # the streamed text was the reply
        else:  # the stream broke off: say what happened on a line of its own
            self._out.write("\n" + self._prefix(reply) + reply.text + "\n")
        if reply.image_png:
            self._out.write(f"     [chart saved to {self._save_image(reply.image_png)}]\n")
        if reply.rateable:
            self._last = reply.exchange_id
            self._out.write(f"     [reply #{reply.exchange_id} — rate it: + or /good, - or /bad]\n")
            self._out.write(
                "     [r or /again: another reply · /better <text>: the one you wanted]\n"
            )
        self._out.flush()

    def _save_image(self, png: bytes) -> Path:
        """A terminal cannot show the picture: keep it in the data dir and say where."""
        self._charts.mkdir(parents=True, exist_ok=True)
        path = self._charts / f"stats-{datetime.now(UTC):%Y%m%d-%H%M%S}.png"
        path.write_bytes(png)
        return path

    @staticmethod
    def _prefix(reply: Reply) -> str:
        return {ReplyKind.ERROR: "bot! ", ReplyKind.NOTICE: "bot: "}.get(reply.kind, "bot> ")

    # chat_key: the ChatAdapter protocol names the chat; the console has only one.
    async def send(self, chat_key: str, text: str) -> None:  # noqa: ARG002
        """A notice that arrives on its own (training progress, the gate's verdict)."""
        async with self._write_lock:
            if self._at_prompt:
                # It arrives while "you> " waits for input: take the prompt's place, then
                # draw the prompt again below it, so the next input still has one.
                self._out.write("\r\x1b[K")
            self._say(f"[{text}]")
            if self._at_prompt:
                self._out.write("you> ")
                self._out.flush()

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def _prompt(self) -> None:
        if self._interactive:
            self._out.write("you> ")
            self._out.flush()
            self._at_prompt = True
