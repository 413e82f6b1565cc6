"""The trainer worker (``selftune trainer``): takes queued training runs from the database and
runs them with the Finetuner's own steps (curate, train, publish, gate, release).

Any number of workers may share a database, on any machines; one run trains at a time (the
same lock as a local run). A worker says it holds its run with a heartbeat; a run whose
heartbeat went stale (its worker was killed, its machine went away) is requeued by the next
worker, its half-written adapter removed, or failed after ``training.max_attempts``. SIGTERM or
Ctrl-C stops a worker cleanly: its run goes back to the queue. No torch: the trainer is a child
process (``training.device`` says where it trains).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.learning.finetune import FinetuneOutcome, Finetuner
from bot.learning.trainer_process import SubprocessTrainer
from bot.settings import Settings
from bot.types import TrainingRun
from storage.repository import Repository

log = logging.getLogger(__name__)

# The trainer's module; the tests point it at a stand-in (tests/support/fake_trainer.py).
TRAINER_MODULE = "bot.trainer"


def subprocess_trainer(settings: Settings) -> SubprocessTrainer:
    """The worker's trainer child: killed by the kernel if the worker is."""
    return SubprocessTrainer(
        nice=settings.training.nice, module=TRAINER_MODULE, die_with_parent=True
    )


class TrainerWorker:
    """Claims queued runs one at a time and trains them; ``serve`` loops until cancelled."""

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        finetuner: Finetuner,
        *,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self._settings = settings
        self._repo = repo
        self._finetuner = finetuner
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()

    async def serve(self, *, once: bool = False) -> None:
        """Take and train queued runs until cancelled (``once``: until the queue is empty)."""
        log.info("trainer worker %s (pid %d) waiting for queued runs", self.host, self.pid)
        while True:
            try:
                outcome = await self.once()
            except Exception:  # a database hiccup must not end the worker
                log.exception("trainer worker: could not take a run; trying again")
                outcome = None
            if outcome is None:
                if once and await self._repo.runs.pending() is None:
                    return
                await asyncio.sleep(self._settings.training.poll_s)

    async def once(self) -> FinetuneOutcome | None:
        """Recover abandoned runs, then take the oldest queued run and train it; None when
        there was none to take (or its heartbeat was lost)."""
        await self.recover()
        claimed = await self._repo.runs.claim(self.host, self.pid)
        if claimed is None:
            return None
        log.info("run #%d taken (attempt %d)", claimed.run.id, claimed.run.attempts)
        return await self._train(claimed.run)

    async def recover(self) -> list[TrainingRun]:
        """Requeue (or fail) the runs whose worker stopped sending heartbeats."""
        cfg = self._settings.training
        older_than = datetime.now(UTC) - timedelta(seconds=cfg.stale_after_s)
        runs = await self._repo.runs.recover_stale(older_than, cfg.max_attempts, self._remove)
        for run in runs:
            log.warning("run #%d was abandoned by %s; requeued or failed", run.id, run.host)
        return runs

    async def _remove(self, output: str) -> None:
        """An abandoned run's adapter folder, unless it was registered as a version."""
        path = Path(output)
        shutil.rmtree(path.with_name(path.name + ".partial"), ignore_errors=True)
        # By number: a registered version's row may name its bucket URL, not this folder.
        registered = {f"v{version.version:04d}" for version in await self._repo.adapters.all()}
        if path.exists() and path.name not in registered:
            shutil.rmtree(path, ignore_errors=True)

    async def _train(self, run: TrainingRun) -> FinetuneOutcome | None:
        task = asyncio.create_task(
            self._finetuner.run_queued(run, self._log, self._requeue), name=f"train-{run.id}"
        )
        beat = asyncio.create_task(self._heartbeat(run.id, task), name=f"heartbeat-{run.id}")
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled() and not beat.done():
                raise  # this worker is stopping (the run went back to the queue)
            return None  # the heartbeat was lost: the run is someone else's now
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(self, run_id: int, task: asyncio.Task[FinetuneOutcome]) -> None:
        while not task.done():
            await asyncio.sleep(self._settings.training.heartbeat_s)
            try:
                mine = await self._repo.runs.heartbeat(run_id, self.host, self.pid)
            except Exception:  # the database is away for now: beat again (it goes stale only
                # after training.stale_after_s without one, and then this answer says so)
                log.warning("run #%d: could not send a heartbeat; trying again", run_id)
                continue
            if not mine:
                log.warning("run #%d is no longer this worker's (taken as stale): stopping", run_id)
                task.cancel()
                return

    async def _requeue(self, run_id: int) -> None:
        if await self._repo.runs.requeue(run_id, self.host, self.pid):
            log.info("run #%d stopped and put back in the queue", run_id)

    async def _log(self, text: str) -> None:
        # The requester hears the result from a serving process (bot.learning.watcher).
        log.info("%s", text)
