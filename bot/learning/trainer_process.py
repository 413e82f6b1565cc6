"""Runs ``python -m bot.trainer SPEC`` as a low-priority child process and reads its progress.

The trainer prints one JSON event per line on stdout (bot.learning.protocol: start, phase,
step, then done or error) and human logs on stderr. Killing it is always safe: it writes its
adapter to ``<output>.partial`` and renames it only when complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from bot.errors import TrainingFailed
from bot.learning.protocol import (
    Done,
    Error,
    Event,
    MalformedEvent,
    TrainingSpec,
    TrainResult,
    parse,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[Event], Awaitable[None]]
# The longest event line read (asyncio's default is 64 KiB): a ``done`` event over it would
# lose a finished adapter. Events are kept small (counts, bounded samples); this is the margin.
EVENT_LINE_LIMIT = 16 * 1024 * 1024


class Trainer(Protocol):
    """Runs one training run: the child process, or a test's stand-in."""

    async def run(self, spec: TrainingSpec, spec_path: Path, progress: ProgressFn) -> TrainResult:
        """Train per ``spec`` (also written at ``spec_path``); return where the adapter is."""
        ...


class SubprocessTrainer:
    """The real trainer: a child process at lower CPU priority, so serving stays responsive."""

    def __init__(
        self, *, nice: int = 10, module: str = "bot.trainer", die_with_parent: bool = False
    ) -> None:
        self._nice = nice
        self._module = module
        # A trainer worker killed with SIGKILL cannot kill its child: the kernel does it
        # (Linux), so no orphan goes on writing an adapter that nobody will register.
        self._preexec = _die_with_parent() if die_with_parent and sys.platform == "linux" else None
        self.pid: int | None = None

    async def run(self, spec: TrainingSpec, spec_path: Path, progress: ProgressFn) -> TrainResult:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self._module,
            str(spec_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(),
            limit=EVENT_LINE_LIMIT,
            preexec_fn=self._preexec,  # one prctl call: nothing to import or lock after fork
        )
        self.pid = process.pid
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, process.pid, self._nice)
        assert process.stdout is not None and process.stderr is not None
        stderr_tail: deque[str] = deque(maxlen=20)
        try:
            drain = asyncio.create_task(_drain(process.stderr, stderr_tail))
            done, error = await _events(process.stdout, progress)
            await process.wait()
            await drain
        except BaseException:
            # Cancelled (shutdown) or failed: never leave a trainer running behind us.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        finally:
            self.pid = None
        output = spec.output_dir
        if process.returncode == 0 and done is not None and output.is_dir():
            return TrainResult.of(output, done)
        code = process.returncode or 0
        if code < 0:  # killed (OOM killer, an operator): say so, not "exited with code -9"
            raise TrainingFailed(f"the trainer was killed by signal {-code}")
        reason = error or (stderr_tail[-1] if stderr_tail else "no output")
        raise TrainingFailed(f"the trainer exited with code {code}: {reason}")


def _die_with_parent() -> Callable[[], None]:
    """What the child runs before exec: have the kernel SIGKILL it when the process that
    started it dies (libc is loaded here, in the parent: the child only calls it)."""
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The trainer must never reach for a model hub; everything it loads is local.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return env


async def _events(
    stream: asyncio.StreamReader, progress: ProgressFn
) -> tuple[Done | None, str | None]:
    """Read the trainer's events until it closes stdout: its ``Done`` and its error message."""
    done: Done | None = None
    error: str | None = None
    async for raw in stream:
        line = raw.decode("utf-8", "replace").strip()
        try:
            event = parse(line)
        except MalformedEvent as exc:
            raise TrainingFailed(f"the trainer sent a malformed event: {exc}") from None
        if event is None:
            log.debug("trainer: %s", line)
            continue
        if isinstance(event, Done):
            done = event
        elif isinstance(event, Error):
            error = event.message
        await progress(event)
    return done, error


async def _drain(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    async for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            tail.append(line)
            log.debug("trainer stderr: %s", line)
