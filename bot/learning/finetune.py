"""When and what to train: gather rated exchanges, run the trainer, hand the result to the gate.
No torch.

A run: check the data (bot.learning.curation) and that there is something to learn from → take the
training lock (a ``running`` row in the database, so two processes never train at once) →
write the dataset and spec → run the trainer subprocess (it trains, then scores the held-out
slice) → the release step (bot.learning.release) registers the version and lets the gate
decide whether it goes live. Whatever happens, the run row ends as succeeded, rejected, failed or
interrupted, nothing partial goes live, and the dataset file (users' words) is deleted.

With ``training.runner = "queue"`` the serving process only checks the data and queues the run
(``start`` → ``queue``); a ``selftune trainer`` worker (bot.learning.worker) takes it and runs
the same steps here (``run_queued``): curate, train, publish, release.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import bot.metrics as metrics
from bot.errors import NothingToTrain, TrainingAlreadyRunning, TrainingFailed, UserError
from bot.learning.ab import ABTesting
from bot.learning.curation import Curated, curate
from bot.learning.dataset import write_jsonl_file
from bot.learning.evaluation import GateDecision
from bot.learning.pair_curation import curate_pairs
from bot.learning.progress import reporter
from bot.learning.protocol import Event, Method, SampleSpec, TrainingSpec, TrainResult
from bot.learning.release import Releaser, Trained
from bot.learning.repeat import repeats_last
from bot.learning.trainer_process import ProgressFn, SubprocessTrainer, Trainer
from bot.learning.versions import AdapterVersions
from bot.outbox import Notify
from bot.settings import Settings
from bot.types import AdapterVersion, RunStatus, TrainingRun, messages
from storage.repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneOutcome:
    """How a fine-tuning run ended: its status, the version it made (if any) and its metrics."""

    run_id: int
    version: int | None
    status: RunStatus
    message: str
    metrics: dict[str, Any]
    decision: GateDecision | None = None


@dataclass(frozen=True)
class Plan:
    """A run that holds the lock, and its data."""

    run_id: int
    method: Method
    curated: Curated
    serving: AdapterVersion | None  # the adapter the candidate starts from and is judged against
    read_at: datetime  # when the ratings were read: a /forget after it is checked at release


@dataclass(frozen=True)
class Data:
    """The checked data of a run, before it takes the lock (or is queued)."""

    method: Method
    curated: Curated
    serving: AdapterVersion | None
    read_at: datetime


Stopped = Callable[[int], Awaitable[None]]
"""What becomes of a run stopped half-way (by its run id): by default it ends interrupted;
a trainer worker gives it back to the queue."""


class TrainingAlreadyQueued(TrainingAlreadyRunning):
    """A run is queued (or running) for a trainer worker already."""

    def __init__(self, run: TrainingRun) -> None:
        UserError.__init__(
            self,
            f"training run {run.id} is already {run.status} "
            f"(since {run.started_at:%H:%M}); a trainer will take it",
        )
        self.run = run


def choose_method(
    method: Literal["auto", "kto", "sft"], disliked: int, kto_min_disliked: int
) -> Method:
    """KTO when asked, or under ``auto`` when there are enough 👎; else SFT on the 👍."""
    if method != "auto":
        return method
    return "kto" if disliked >= kto_min_disliked else "sft"


class Finetuner:
    """Starts training in the background (chat stays usable) or runs it in the foreground.

    A/B tests are a sibling service: the Finetuner's releaser starts one (``ab``) when a
    candidate passes the gate and ``ab.share`` > 0; the commands talk to it directly.
    """

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        versions: AdapterVersions,
        model_dir: Callable[[], Awaitable[Path]],
        trainer: Trainer | None = None,
        *,
        ab: ABTesting | None = None,
    ) -> None:
        self._settings = settings
        self._repo = repo
        self._versions = versions
        self._model_dir = model_dir
        self._trainer = trainer or SubprocessTrainer(nice=settings.training.nice)
        # The composition root passes the ABTesting its commands use; a lone finetuner
        # (``selftune train``) releases into one of its own.
        ab = ab if ab is not None else ABTesting(settings, repo, versions)
        self._releaser = Releaser(settings, repo, versions, ab)
        self._task: asyncio.Task[FinetuneOutcome] | None = None
        self.progress: Event | None = None  # the trainer's last event (for /status)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(
        self,
        *,
        trigger: str,
        requested_by: str | None,
        notify: Notify,
        notify_to: str | None = None,
    ) -> str:
        """Start a background run (or, with ``training.runner = "queue"``, queue it with
        ``notify_to``, where its result is told); returns what to tell the admin. Raises
        NothingToTrain or TrainingAlreadyRunning when it cannot start."""
        if self._settings.training.runner == "queue":
            return await self.queue(trigger=trigger, requested_by=requested_by, notify_to=notify_to)
        await self._settle()
        plan = await self._prepare(trigger, requested_by)
        self._task = asyncio.create_task(self._run(plan, notify), name=f"train-{plan.run_id}")
        note = plan.curated.gate_note()
        return (
            f"Fine-tuning started (run #{plan.run_id}, {plan.method.upper()}): "
            f"{plan.curated.summary(plan.method)}."
            + (f" {note}" if note else "")
            + " I will report progress as it goes; the chat stays usable."
        )

    async def queue(self, *, trigger: str, requested_by: str | None, notify_to: str | None) -> str:
        """Check the data as a run would, then queue the run for a trainer worker; the run's
        result is told at ``notify_to`` by a serving process (bot.learning.watcher)."""
        pending = await self._repo.runs.pending()
        if pending is not None:
            raise TrainingAlreadyQueued(pending)
        data = await self._curate()
        run_id = await self._repo.runs.enqueue(trigger, requested_by, notify_to)
        note = data.curated.gate_note()
        return (
            f"Queued as run #{run_id} ({data.method.upper()}): "
            f"{data.curated.summary(data.method)}; a trainer will take it."
            + (f" {note}" if note else "")
            + " I will tell you the result; the chat stays usable."
        )

    async def run_queued(
        self, run: TrainingRun, notify: Notify, stopped: Stopped, on_event: ProgressFn | None = None
    ) -> FinetuneOutcome:
        """Run a queued ``run`` a worker claimed, with the same steps as a local run (its data
        is read now, not when it was queued). ``stopped``: what a cancelled run becomes."""
        try:
            data = await self._curate()
        except NothingToTrain as exc:
            message = f"Training run #{run.id} did not train: {exc}"
            await self._repo.runs.finish(run.id, RunStatus.FAILED, message)
            metrics.record_run(RunStatus.FAILED)
            return FinetuneOutcome(run.id, None, RunStatus.FAILED, message, {})
        return await self._run(self._plan(run.id, data), notify, on_event, stopped)

    async def _settle(self) -> None:
        """Refuse while this process trains; but a run whose row is already finished may still
        be sending its last message: let it (nothing else of it is left) before the next one."""
        task = self._task
        if task is None or task.done():
            return
        running = await self._repo.runs.running()
        if running is not None:
            raise TrainingAlreadyRunning(running)
        # Shielded: a caller that gives up must not cut the last run's report short.
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

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
        plan = await self._prepare(trigger, requested_by)
        await notify(
            f"Training run #{plan.run_id} ({plan.method.upper()}): "
            f"{plan.curated.summary(plan.method)}"
        )
        return await self._run(plan, notify, on_event)

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _prepare(self, trigger: str, requested_by: str | None) -> Plan:
        data = await self._curate()
        run_id = await self._repo.runs.start(trigger, requested_by, os.getpid())
        return self._plan(run_id, data)

    def _plan(self, run_id: int, data: Data) -> Plan:
        data.curated.sample_heldout(run_id, self._settings.gate.heldout_max)
        return Plan(run_id, data.method, data.curated, data.serving, data.read_at)

    async def _curate(self) -> Data:
        """The rated data, checked: raises NothingToTrain when there is nothing (new) to
        learn from."""
        cfg = self._settings.training
        read_at = datetime.now(UTC)
        rated = await self._repo.training.rated(limit=cfg.max_examples)
        serving = await self._repo.adapters.active()
        seen = serving.exchange_ids if serving else ()
        curated = curate(rated, cfg, self._settings.gate, seen)
        liked, disliked = curated.counts("train")
        method = choose_method(cfg.method, disliked, cfg.kto_min_disliked)
        usable = liked if method == "sft" else liked + disliked
        if usable < cfg.min_examples:
            what = "liked repl" + ("y" if liked == 1 else "ies") if method == "sft" else "ratings"
            raise NothingToTrain(
                f"Nothing to fine-tune on yet: {usable} {what} (need {cfg.min_examples}). "
                f"{curated.summary(method)}. Rate replies with 👍/👎 first."
            )
        repeat = await repeats_last(self._repo, self._settings, method, curated.trained_ids(method))
        if repeat is not None:
            raise NothingToTrain(repeat)
        return Data(method, curated, serving, read_at)

    async def _run(
        self,
        plan: Plan,
        notify: Notify,
        on_event: ProgressFn | None = None,
        stopped: Stopped | None = None,
    ) -> FinetuneOutcome:
        started = time.monotonic()
        run_id = plan.run_id
        version = await self._repo.adapters.next_version()
        output = self._settings.adapters_dir / f"v{version:04d}"
        work = self._settings.data_dir / "training" / f"run-{run_id:04d}"
        try:
            await self._clear_orphan(output)
            await self._repo.runs.set_output(run_id, str(output))  # removed if abandoned
            spec = await self._write_inputs(work, output, plan)
            report = reporter(self, notify, on_event, run_id)
            # Published by the releaser (bot.learning.release): the one place an adapter is
            # made readable by every serving process, whole before its version row exists.
            result = await self._trainer.run(spec, work / "spec.json", report)
            elapsed = time.monotonic() - started
            return await self._release(plan, version, result, spec, elapsed, work, notify)
        except asyncio.CancelledError:
            if stopped is None:
                await self._end(run_id, RunStatus.INTERRUPTED, "stopped before it finished", output)
            else:
                await self._discard(output)
                await asyncio.shield(stopped(run_id))
            raise
        except Exception as exc:
            # Whatever broke, the run must end as failed, with the reason, and nothing swapped.
            message = f"Training run #{run_id} failed: {exc}"
            log.warning(message, exc_info=not isinstance(exc, TrainingFailed))
            await self._end(run_id, RunStatus.FAILED, message, output)
            await notify(message + " Nothing changed: the serving adapter is the same.")
            return FinetuneOutcome(run_id, None, RunStatus.FAILED, message, {})
        finally:
            # The dataset holds users' words: keep only the spec and the ids in the run report.
            for name in ("dataset.jsonl", "unrated.jsonl", "pairs.jsonl"):
                (work / name).unlink(missing_ok=True)

    async def _release(
        self,
        plan: Plan,
        version: int,
        result: TrainResult,
        spec: TrainingSpec,
        duration_s: float,
        work: Path,
        notify: Notify,
    ) -> FinetuneOutcome:
        """The gate, the version's registration, and what the admin is told."""
        trained = Trained(
            plan.run_id,
            version,
            plan.method,
            plan.curated,
            result,
            spec,
            duration_s,
            compared=plan.serving.version if plan.serving else None,
            read_at=plan.read_at,
        )
        released = await self._releaser.release(trained)
        summary = json.dumps(released.report, indent=2, ensure_ascii=False)
        (work / "report.json").write_text(summary, encoding="utf-8")  # ids and numbers only
        await notify(released.message)
        return FinetuneOutcome(
            plan.run_id,
            version,
            released.status,
            released.message,
            released.metrics,
            released.decision,
        )

    async def _discard(self, output: Path) -> None:
        """A stopped run's adapter: its ``.partial`` folder, and the folder itself if it was
        completed but never registered as a version."""
        shutil.rmtree(output.with_name(output.name + ".partial"), ignore_errors=True)
        await self._clear_orphan(output)

    async def _clear_orphan(self, output: Path) -> None:
        """A folder at the new version's path that no version points at was left by a trainer
        whose server died before registering it: nothing refers to it, so it goes."""
        if output.exists() and await self._repo.adapters.get(int(output.name[1:])) is None:
            log.warning(
                "removing %s: an adapter never registered (its run was interrupted)", output
            )
            shutil.rmtree(output, ignore_errors=True)

    async def _write_inputs(self, work: Path, output: Path, plan: Plan) -> TrainingSpec:
        """The dataset, the unrated text (when the LM term is on) and SPEC.json, in ``work``."""
        work.mkdir(parents=True, exist_ok=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_file((r.to_json() for r in plan.curated.rows), work / "dataset.jsonl")
        cfg = self._settings.training
        lm_dataset = None
        if cfg.lm_weight > 0:
            unrated = await self._repo.training.unrated(cfg.lm_max_examples)
            rows = [
                {
                    "prompt": messages(e.prompt),
                    "exchange_id": e.id,
                }
                for e in unrated
            ]
            write_jsonl_file(rows, work / "unrated.jsonl")
            lm_dataset = work / "unrated.jsonl"
        pairs = curate_pairs(
            await self._repo.training.pairs(), cfg, self._settings.gate, plan.curated
        )
        plan.curated.pair_exchange_ids = pairs.exchange_ids()  # recorded on the version
        pairs_dataset = work / "pairs.jsonl" if pairs.rows else None
        if pairs_dataset is not None:
            write_jsonl_file((r.to_json() for r in pairs.rows), pairs_dataset)
        serving = plan.serving
        spec = TrainingSpec(
            model_dir=await self._model_dir(),
            dataset=work / "dataset.jsonl",
            output_dir=output,
            lora=self._settings.lora,
            training=cfg,
            threads=self._settings.model.threads,
            method=plan.method,
            serving_lora=await self._versions.local_path(serving) if serving else None,
            serving_version=serving.version if serving else None,
            lm_dataset=lm_dataset,
            pairs_dataset=pairs_dataset,
            samples=self._samples(),
        )
        (work / "spec.json").write_text(spec.to_json(), encoding="utf-8")
        return spec

    def _samples(self) -> SampleSpec | None:
        """What the trainer samples for the gate's look at the candidate's replies."""
        gate = self._settings.gate
        if not gate.enabled or (gate.sample_prompts == 0 and not gate.general_prompts):
            return None
        params = self._settings.generation.params()
        system = self._settings.chat.system_prompt
        head = [{"role": "system", "content": system}] if system else []
        general = [[*head, {"role": "user", "content": text}] for text in gate.general_prompts]
        return SampleSpec(
            gate.sample_prompts, gate.samples_per_prompt, params, gate.min_reward_auc, general
        )

    async def _end(self, run_id: int, status: RunStatus, message: str, output: Path) -> None:
        partial = output.with_name(output.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        await asyncio.shield(self._repo.runs.finish(run_id, status, message))
        metrics.record_run(status)


__all__ = [
    "FinetuneOutcome",
    "Finetuner",
    "NothingToTrain",
    "Notify",
    "TrainingAlreadyQueued",
    "TrainingAlreadyRunning",
    "choose_method",
]
