"""When and what to train: gather rated exchanges, run the trainer, register, swap. No torch.

A run: check there is something to learn from → take the training lock (a ``running`` row in
the database, so two processes never train at once) → write the dataset and spec → run the
trainer subprocess → register the adapter as a new version → activate it. Whatever happens,
the run row ends as succeeded, failed or interrupted, and nothing partial goes live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.dataset import kto_rows, write_jsonl_file
from bot.trainer_process import ProgressFn, SubprocessTrainer, Trainer, TrainingFailed
from bot.types import RunStatus
from bot.versions import AdapterVersions
from storage.repository import Repository, TrainingAlreadyRunning

log = logging.getLogger(__name__)

Notify = Callable[[str], Awaitable[None]]


async def _ignore(_text: str) -> None:
    return None


class NothingToTrain(ValueError):
    """Too few usable ratings; the message says how many there are and how many are needed."""


@dataclass(frozen=True)
class FinetuneOutcome:
    run_id: int
    version: int | None
    status: RunStatus
    message: str
    metrics: dict[str, Any]


class Finetuner:
    """Starts training in the background (chat stays usable) or runs it in the foreground."""

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        versions: AdapterVersions,
        model_dir: Callable[[], Awaitable[Path]],
        trainer: Trainer | None = None,
    ) -> None:
        self._settings = settings
        self._repo = repo
        self._versions = versions
        self._model_dir = model_dir
        self._trainer = trainer or SubprocessTrainer(nice=settings.training.nice)
        self._task: asyncio.Task[FinetuneOutcome] | None = None
        self.progress: dict[str, Any] = {}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, *, trigger: str, requested_by: str | None, notify: Notify) -> str:
        """Start a background run; returns what to tell the admin. Raises NothingToTrain or
        TrainingAlreadyRunning when it cannot start."""
        if self.running:
            raise TrainingAlreadyRunning(await self._running_run())
        rows, run_id = await self._prepare(trigger, requested_by)
        self._task = asyncio.create_task(self._run(run_id, rows, notify), name=f"train-{run_id}")
        liked = sum(1 for r in rows if r["label"])
        return (
            f"Fine-tuning started (run #{run_id}) on {liked} liked of {len(rows)} rated "
            "replies. I will report progress here; the chat stays usable meanwhile."
        )

    async def _running_run(self) -> Any:
        run = await self._repo.running_training()
        assert run is not None
        return run

    async def wait(self) -> FinetuneOutcome | None:
        """Wait for the background run, if any, and return how it ended."""
        if self._task is None:
            return None
        return await self._task

    async def run(
        self,
        *,
        trigger: str,
        requested_by: str | None,
        notify: Notify,
        on_event: ProgressFn | None = None,
    ) -> FinetuneOutcome:
        """Train in the foreground (``selftune train``); ``on_event`` sees every trainer event."""
        rows, run_id = await self._prepare(trigger, requested_by)
        return await self._run(run_id, rows, notify, on_event)

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _prepare(
        self, trigger: str, requested_by: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        cfg = self._settings.training
        rated = await self._repo.rated_exchanges(limit=cfg.max_examples)
        rows = list(kto_rows(rated, with_meta=True))
        liked = sum(1 for r in rows if r["label"])
        if liked < cfg.min_examples:
            raise NothingToTrain(
                f"Nothing to fine-tune on yet: {liked} liked repl{'y' if liked == 1 else 'ies'} "
                f"(need {cfg.min_examples}). Rate replies with 👍 (or /good) first."
            )
        run_id = await self._repo.start_training_run(trigger, requested_by, os.getpid())
        return rows, run_id

    async def _run(
        self,
        run_id: int,
        rows: list[dict[str, Any]],
        notify: Notify,
        on_event: ProgressFn | None = None,
    ) -> FinetuneOutcome:
        started = time.monotonic()
        version = await self._repo.next_adapter_version()
        output = self._settings.adapters_dir / f"v{version:04d}"
        work = self._settings.data_dir / "training" / f"run-{run_id:04d}"
        try:
            spec = self._write_inputs(work, output, rows, await self._model_dir())
            await notify(f"Training run #{run_id}: preparing adapter v{version}…")
            reporter = self._reporter(notify, on_event)
            result = await self._trainer.run(spec, work / "spec.json", reporter)
            return await self._register(
                run_id,
                version,
                result.output_dir,
                rows,
                result.metrics,
                spec,
                time.monotonic() - started,
                notify,
            )
        except asyncio.CancelledError:
            await self._end(run_id, RunStatus.INTERRUPTED, "stopped before it finished", output)
            raise
        except Exception as exc:
            # Whatever broke, the run must end as failed, with the reason, and nothing swapped.
            message = f"Training run #{run_id} failed: {exc}"
            log.warning(message, exc_info=not isinstance(exc, TrainingFailed))
            await self._end(run_id, RunStatus.FAILED, message, output)
            await notify(message)
            return FinetuneOutcome(run_id, None, RunStatus.FAILED, message, {})

    def _write_inputs(
        self, work: Path, output: Path, rows: list[dict[str, Any]], model_dir: Path
    ) -> dict[str, Any]:
        work.mkdir(parents=True, exist_ok=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_file(rows, work / "dataset.jsonl")
        spec = {
            "model_dir": str(model_dir),
            "dataset": str(work / "dataset.jsonl"),
            "output_dir": str(output),
            "lora": self._settings.lora.model_dump(),
            "training": self._settings.training.model_dump(),
            "threads": self._settings.model.threads,
        }
        (work / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
        return spec

    def _reporter(self, notify: Notify, on_event: ProgressFn | None) -> ProgressFn:
        last = {"at": 0.0, "pct": -100.0}

        async def report(event: dict[str, Any]) -> None:
            self.progress = event
            if on_event is not None:
                await on_event(event)
            if event.get("event") != "step":
                return
            step, total = int(event.get("step", 0)), max(1, int(event.get("total_steps", 1)))
            pct, now = 100.0 * step / total, time.monotonic()
            # Enough to see it move, not so much that a chat floods: every 25 % or 60 s.
            if step == total or pct - last["pct"] >= 25 or now - last["at"] >= 60:
                last.update(at=now, pct=pct)
                loss = event.get("loss")
                loss_text = f", loss {loss:.3f}" if isinstance(loss, int | float) else ""
                await notify(f"Training: step {step}/{total} ({pct:.0f}%){loss_text}")

        return report

    async def _register(
        self,
        run_id: int,
        version: int,
        output: Path,
        rows: list[dict[str, Any]],
        metrics: dict[str, Any],
        spec: dict[str, Any],
        duration: float,
        notify: Notify,
    ) -> FinetuneOutcome:
        parent = self._versions.current
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        await self._repo.add_adapter_version(
            version=version,
            path=str(output),
            parent=parent,
            base_model=self._settings.model.name,
            exchange_ids=[int(r["exchange_id"]) for r in rows],
            metrics=numeric,
            hyperparams={"lora": spec["lora"], "training": spec["training"]},
            duration_s=duration,
            training_run_id=run_id,
        )
        await self._versions.activate(version)
        loss = numeric.get("train_loss")
        message = (
            f"Fine-tuned adapter v{version} is live ({len(rows)} rated replies"
            + (f", final loss {loss:.3f}" if loss is not None else "")
            + f", {duration:.0f} s). /rollback returns to the previous one."
        )
        await self._repo.finish_training_run(
            run_id, RunStatus.SUCCEEDED, message, adapter_version=version, report=metrics
        )
        await notify(message)
        return FinetuneOutcome(run_id, version, RunStatus.SUCCEEDED, message, metrics)

    async def _end(self, run_id: int, status: RunStatus, message: str, output: Path) -> None:
        partial = output.with_name(output.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        await asyncio.shield(self._repo.finish_training_run(run_id, status, message))


__all__ = ["FinetuneOutcome", "Finetuner", "NothingToTrain", "Notify", "TrainingAlreadyRunning"]
