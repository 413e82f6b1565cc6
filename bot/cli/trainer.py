"""``selftune trainer``: a trainer worker that takes queued training runs from the database
(bot.learning.worker). SIGTERM and Ctrl-C stop it cleanly: the run it trains goes back to
the queue."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from bot.learning.finetune import Finetuner
from bot.learning.trainer_process import Trainer
from bot.learning.versions import AdapterVersions
from bot.learning.worker import TrainerWorker, subprocess_trainer
from bot.settings import Settings
from bot.startup import open_adapter_files, open_repository, prepare_data_dir, resolve_model_dir
from storage.repository import Repository


async def build_worker(
    settings: Settings,
    repo: Repository,
    trainer: Trainer,
    *,
    host: str | None = None,
    pid: int | None = None,
) -> TrainerWorker:
    """The worker with what a run needs: the adapter store (checked: a bucket it cannot reach
    stops the start) to publish to and to fetch the serving adapter from, and the model."""
    files = await open_adapter_files(settings)

    async def model_dir() -> Path:
        return await resolve_model_dir(settings, progress=False)

    versions = AdapterVersions(repo, None, files)
    finetuner = Finetuner(settings, repo, versions, model_dir, trainer)
    return TrainerWorker(settings, repo, finetuner, host=host, pid=pid)


async def trainer(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the queue until stopped (``--once``: until it is empty). Exit status 0."""
    prepare_data_dir(settings)
    repo = await open_repository(settings)
    try:
        worker = await build_worker(settings, repo, subprocess_trainer(settings))
        if settings.training.runner != "queue":
            print(
                "selftune: note: training.runner is 'local' here; the serving processes must "
                "have training.runner = 'queue' to queue runs for this worker",
                file=sys.stderr,
            )
        with _stopped_by_sigterm() as stopped:
            try:
                await worker.serve(once=args.once)
            except asyncio.CancelledError:
                if not stopped.is_set():
                    raise  # Ctrl-C: asyncio.run reports it as KeyboardInterrupt
        return 0
    finally:
        await repo.aclose()


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[asyncio.Event]:
    """While entered, SIGTERM cancels the current task; the event says it happened."""
    stopped = asyncio.Event()
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        stopped.set()
        if task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals here (Windows)
        loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        yield stopped
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        if stopped.is_set() and task is not None:
            task.uncancel()
