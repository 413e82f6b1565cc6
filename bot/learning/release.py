"""What happens to a trained adapter: the gate decides, the version is registered with its
lineage and numbers, and it goes live, into an A/B test, or stays out (rejected or kept).

A rejected candidate is kept, with status ``rejected`` and its numbers, so an admin can see
why and still ``/activate`` it; it never goes live on its own.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bot.metrics as metrics_registry
from bot.errors import VersionError
from bot.learning.ab import ABTesting
from bot.learning.adapter_files import AdapterFiles, adapter_files
from bot.learning.curation import Curated
from bot.learning.evaluation import GateDecision, decide
from bot.learning.protocol import Method, TrainingSpec, TrainResult
from bot.learning.versions import AdapterVersions, describe
from bot.settings import Settings
from bot.types import AdapterStatus, RunStatus
from storage.repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    """A finished trainer run, waiting for its release."""

    run_id: int
    version: int
    method: Method
    curated: Curated
    result: TrainResult
    spec: TrainingSpec
    duration_s: float
    compared: int | None  # the version serving when the run started: its parent, its rival
    read_at: datetime  # when the run read its ratings (a /forget after it taints the version)

    def users(self) -> set[str]:
        """The raters whose ratings the adapter was trained on."""
        return {u for r in self.curated.train for u in r.users}


@dataclass(frozen=True)
class Released:
    """What releasing a trained run decided: its final status, message, gate decision and report."""

    status: RunStatus
    message: str
    decision: GateDecision
    metrics: dict[str, float]
    report: dict[str, Any]


def gate(settings: Settings, trained: Trained) -> GateDecision:
    """The gate's decision on ``trained`` (a pass when the gate is switched off)."""
    if not settings.gate.enabled:
        return GateDecision("pass", "the gate is off (gate.enabled = false)")
    evaluation = trained.result.evaluation
    needed = trained.curated.min_heldout
    if evaluation is None:
        return decide({}, {}, 0, settings.gate, needed)
    return decide(
        evaluation.serving,
        evaluation.candidate,
        evaluation.heldout,
        settings.gate,
        needed,
        base=evaluation.base,
    )


def trained_ids(trained: Trained) -> list[int]:
    """The exchanges the run learned from: those of the rows the trainer says its steps used
    (``trained_exchange_ids``; fewer than the curated set when ``max_steps`` cut the run
    short), or every curated training row of the method when it does not say."""
    ids = trained.curated.trained_ids(trained.method)
    used = trained.result.data.get("trained_exchange_ids")
    if not isinstance(used, list):
        return ids
    seen = {int(i) for i in used if isinstance(i, int)}
    allowed = set(ids)
    rows = [r for r in trained.curated.train if r.exchange_id in seen]
    return [i for r in rows for i in r.exchange_ids if i in allowed]


def version_metrics(result: TrainResult) -> dict[str, float]:
    """Training numbers, the candidate's held-out metrics, and those of the LoRA serving
    when it was trained (``serving.*``) and of the base (``base.*``), for comparison."""
    numbers = dict(result.metrics)
    evaluation = result.evaluation
    if evaluation is not None:
        for prefix, values in (
            ("", evaluation.candidate),
            ("serving.", evaluation.serving),
            ("base.", evaluation.base),
        ):
            numbers.update({prefix + name: value for name, value in values.items()})
    return numbers


class Releaser:
    """Publishes a trained adapter to the adapter store, registers it, and acts on the gate's
    decision."""

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        versions: AdapterVersions,
        ab: ABTesting,
        files: AdapterFiles | None = None,
    ) -> None:
        self._settings = settings
        self._repo = repo
        self._versions = versions
        self._ab = ab
        self._files = files if files is not None else adapter_files(settings)

    async def release(self, trained: Trained) -> Released:
        """Publish ``trained``'s adapter, register it as a version (with its lineage, numbers
        and the gate's decision), act on the decision, and end the run."""
        # Published whole before the row exists: no process is ever told of a partial adapter.
        url = await self._files.publish(trained.result.output_dir, trained.version)
        decision = gate(self._settings, trained)
        metrics = version_metrics(trained.result)
        train_ids = trained_ids(trained)  # SFT: the 👍 rows only; the rows the steps saw
        # A /forget while the run trained: the adapter learned from rows that are gone now
        # (the author's exchanges, or prompts scrubbed of their words), or from the ratings of
        # a user who is gone now (the exchange, someone else's, stays).
        withdrawn = await self._repo.training.withdrawn(train_ids)
        forgotten = await self._repo.runs.forgotten_since(trained.users(), trained.read_at)
        live = decision.verdict == "pass" or (
            decision.verdict == "undecided" and self._settings.gate.when_undecided == "activate"
        )
        # The gate compared the candidate with the adapter serving when the run started; an
        # admin's /activate or /rollback since then must not be undone by it.
        active = await self._repo.adapters.active()
        now = active.version if active else None
        moved = now != trained.compared
        status = AdapterStatus.REJECTED if decision.verdict == "fail" else AdapterStatus.READY
        await self._repo.adapters.add(
            version=trained.version,
            path=url,
            parent=trained.compared,
            base_model=self._settings.model.name,
            exchange_ids=train_ids,
            metrics=metrics,
            hyperparams=self._hyperparams(trained, decision),
            duration_s=trained.duration_s,
            training_run_id=trained.run_id,
            status=status,
            tainted=bool(withdrawn or forgotten),
        )
        if live and moved:
            message = _moved(trained, now)
        else:
            message = await self._act(trained, decision, live)
        message += _dropped_note(trained.result)
        run_status = RunStatus.REJECTED if decision.verdict == "fail" else RunStatus.SUCCEEDED
        report = self._report(trained, decision, withdrawn, len(forgotten), now)
        report["curation"] = await self._curation(trained.run_id)
        await self._repo.runs.finish(
            trained.run_id, run_status, message, adapter_version=trained.version, report=report
        )
        metrics_registry.record_run(run_status)
        return Released(run_status, message, decision, metrics, report)

    async def _act(self, trained: Trained, decision: GateDecision, live: bool) -> str:
        """Serve the candidate (or test it on some chats) if it may; say what happened."""
        if decision.verdict == "fail":
            return self._rejected(trained, decision)
        if live:
            return await self._go_live(trained, decision)
        note = trained.curated.gate_note()
        return (
            f"Adapter v{trained.version} is ready but not serving: trained, not yet proven "
            f"(the gate could not judge, {decision.reason}). /activate {trained.version} "
            f"tries it; /rollback undoes that." + (f" {note}" if note else "")
        )

    def _hyperparams(self, trained: Trained, decision: GateDecision) -> dict[str, Any]:
        return {
            "method": trained.method,
            "lora": trained.spec.lora.model_dump(),
            "training": trained.spec.training.model_dump(),
            "gate": {**self._settings.gate.model_dump(), **decision.as_dict()},
        }

    async def _curation(self, run_id: int) -> dict[str, int]:
        """The operator's curation since the previous run read its data (all of it before a
        first run), by action: what this run's data reflects that the last one's did not."""
        previous = [run for run in await self._repo.runs.recent(limit=5) if run.id < run_id]
        since = previous[0].started_at if previous else None
        return await self._repo.curation.summary_since(since)

    def _report(
        self,
        trained: Trained,
        decision: GateDecision,
        withdrawn: set[int],
        forgotten: int,
        active: int | None,
    ) -> dict[str, Any]:
        return {
            "compared_with": trained.compared,
            "active_at_release": active,
            "method": trained.method,
            "data": trained.curated.report(),
            "trainer_data": {k: v for k, v in trained.result.data.items() if k != "losses"},
            "metrics": _with_losses(trained.result),
            "evaluation": _evaluation_json(trained.result),
            "gate": decision.as_dict(),
            "withdrawn_during_run": sorted(withdrawn),
            "raters_forgotten_during_run": forgotten,  # a count: their keys are gone too
        }

    def _rejected(self, trained: Trained, decision: GateDecision) -> str:
        return (
            f"Adapter v{trained.version} was rejected by the gate and is not serving: "
            f"{decision.reason}. Still serving {describe(self._versions.current)}. "
            f"/adapters shows its numbers; /activate {trained.version} serves it anyway."
        )

    async def _go_live(self, trained: Trained, decision: GateDecision) -> str:
        what = (
            f"It passed the gate ({decision.reason})"
            if decision.verdict == "pass"
            else f"The gate could not judge: {decision.reason}"
        )
        share = self._settings.ab.share
        if share > 0 and self._versions.current != trained.version:
            try:
                started = await self._ab.start(trained.version, share, "gate")
                return f"Adapter v{trained.version} is trained. {what}. {started}"
            except VersionError as exc:
                log.warning("no A/B test for v%s: %s", trained.version, exc)
                what += f"; no A/B test ({exc})"
        await self._versions.activate(trained.version)
        return (
            f"Adapter v{trained.version} is live ({trained.method.upper()}, "
            f"{trained.duration_s:.0f} s). {what}. /rollback returns to the previous one."
        )


def _moved(trained: Trained, now: int | None) -> str:
    """The candidate would have gone live, but the serving adapter changed during the run."""
    return (
        f"Adapter v{trained.version} is ready but not serving: it was judged against "
        f"{describe(trained.compared)}, but {describe(now)} was activated while it trained "
        f"(/activate or /rollback), so that one keeps serving. "
        f"/activate {trained.version} serves it."
    )


def _with_losses(result: TrainResult) -> dict[str, Any]:
    """The training numbers, with each step's loss where the trainer sent them (its data):
    the run page draws its curve from them after a restart."""
    losses = result.data.get("losses")
    return {**result.metrics, "losses": losses} if isinstance(losses, list) else result.metrics


def _evaluation_json(result: TrainResult) -> dict[str, Any]:
    evaluation = result.evaluation
    return evaluation.to_dict() if evaluation is not None else {}


def _dropped_note(result: TrainResult) -> str:
    """The rows the trainer could not use, and why (the data checks did the rest up front)."""
    dropped = result.data.get("dropped", {})
    reasons = Counter({str(reason): int(n) for reason, n in dropped.items()})
    if not reasons:
        return ""
    listed = "; ".join(f"{n}× {reason}" for reason, n in reasons.most_common())
    total = int(result.data.get("dropped_total", sum(reasons.values())))
    return f" The trainer dropped {total} row(s): {listed}."
