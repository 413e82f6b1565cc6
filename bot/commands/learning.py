"""The admin commands of the learning loop: /finetune, /status, /adapters, /rollback,
/activate, /ab, /stats. Each returns one private Reply (admin output); training progress and
the gate's verdict go to the admin's private chat too (bot/outbox.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.errors import NothingToTrain, TrainingAlreadyRunning, VersionError
from bot.learning.evaluation import GATE_METRICS, gate_metric
from bot.learning.protocol import Phase, Step
from bot.learning.versions import describe
from bot.outbox import Notify
from bot.types import AdapterVersion, Incoming, Reply, ReplyKind

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)
Handler = Callable[[Incoming, str], Awaitable[Reply]]
_NAMES = {"train_loss": "train loss"}  # other numbers than the gate's, as shown; rest as recorded
_GATE_METRICS = tuple(m.name for m in GATE_METRICS)  # the default first
_PREFIXES = ("serving.", "base.")
_FIRST_IDS = 10  # exchange ids the detail view lists
_GATE_SETTINGS = ("margin", "min_heldout", "when_undecided", "heldout_fraction", "heldout_max")


def _private(text: str, kind: ReplyKind = ReplyKind.COMMAND) -> Reply:
    return Reply(text, kind, private=True)


def version_arg(args: str, usage: str) -> int | None:
    """'3' → 3, '0' / 'base' → None (the base model); anything else is a usage error."""
    value = args.strip().lower().lstrip("v")
    if value in ("0", "base"):
        return None
    if not value.isdigit():
        raise VersionError(f"Usage: {usage} (a version number; 0 is the base model).")
    return int(value)


def _name(metric: str) -> str:
    known = gate_metric(metric)
    return known.short if known is not None else _NAMES.get(metric, metric)


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _gate(v: AdapterVersion) -> dict[str, object]:
    gate = v.hyperparams.get("gate")
    return {str(k): val for k, val in gate.items()} if isinstance(gate, dict) else {}


def deciding_metric(v: AdapterVersion) -> str:
    """The metric the gate decided on (recorded with its decision), else the first of the
    gate's metrics that the version has numbers for (the default, reward margin, first)."""
    recorded = _gate(v).get("metric")
    if isinstance(recorded, str):
        return recorded
    return next((m for m in _GATE_METRICS if m in v.metrics), _GATE_METRICS[0])


def format_version(v: AdapterVersion) -> str:
    """One line per version: status, lineage, data, the deciding metric next to the serving
    adapter's value when it was trained, the train loss, the gate's verdict."""
    metric = deciding_metric(v)
    shown = []
    if metric in v.metrics:
        serving = v.metrics.get(f"serving.{metric}")
        vs = f" (serving {serving:.3g})" if serving is not None else ""
        shown.append(f"{_name(metric)} {v.metrics[metric]:.3g}{vs}")
    if "train_loss" in v.metrics:
        shown.append(f"train loss {v.metrics['train_loss']:.3g}")
    verdict = _gate(v).get("verdict")
    method = v.hyperparams.get("method")
    took = f", {v.duration_s:.0f} s" if v.duration_s is not None else ""
    flags = " ⚠ trained on forgotten data" if v.tainted else ""
    return (
        f"v{v.version} [{v.status}] {v.created_at:%Y-%m-%d %H:%M} UTC, parent "
        f"{'v' + str(v.parent) if v.parent else 'base'}, "
        + (f"{str(method).upper()} " if method else "")
        + f"on {len(v.exchange_ids)} exchanges{took}"
        + (f"; {', '.join(shown)}" if shown else "")
        + (f", gate: {verdict}" if verdict else "")
        + flags
    )


def _settings_line(title: str, values: object) -> str | None:
    if not isinstance(values, dict) or not values:
        return None
    parts = [
        f"{k} {'/'.join(map(str, val)) if isinstance(val, list) else _number(val)}"
        for k, val in values.items()
        if val is not None
    ]
    return f"{title}: {', '.join(parts)}"


def version_details(v: AdapterVersion, serving: int | None, candidate: int | None) -> str:
    """Everything recorded about one version (``/adapters N``)."""
    role = (
        " ▶ serving"
        if v.version == serving
        else " ◐ the A/B test's candidate"
        if v.version == candidate
        else ""
    )
    took = f"; training took {v.duration_s:.0f} s" if v.duration_s is not None else ""
    lines = [
        f"Adapter v{v.version} [{v.status}]{role}",
        f"Parent: {'v' + str(v.parent) if v.parent else 'base model'}",
        f"Created: {v.created_at:%Y-%m-%d %H:%M} UTC{took}",
        "Tainted: yes, trained on data a user later asked to /forget"
        if v.tainted
        else "Tainted: no",
    ]
    method = v.hyperparams.get("method")
    if method:
        lines.append(f"Method: {str(method).upper()}")
    titles = {"lora": "LoRA", "training": "Training"}
    for key, values in v.hyperparams.items():
        if key not in ("method", "gate"):
            line = _settings_line(titles.get(key, key), values)
            lines.append(line if line is not None else f"{key}: {_number(values)}")
    lines.extend(_gate_lines(v))
    ids = sorted(v.exchange_ids)
    listed = ", ".join(map(str, ids[:_FIRST_IDS])) + (", …" if len(ids) > _FIRST_IDS else "")
    lines.append(f"Exchanges: {len(ids)}" + (f" (ids {listed})" if ids else ""))
    return "\n".join(lines)


def _gate_lines(v: AdapterVersion) -> list[str]:
    gate = _gate(v)
    lines = []
    if gate.get("verdict"):
        lines.append(f"Gate: {gate['verdict']} — {gate.get('reason', '')}")
        settings = {k: gate[k] for k in _GATE_SETTINGS if k in gate}
        line = _settings_line("Gate settings", settings)
        if line:
            lines.append(line)
    decides = deciding_metric(v)
    compared = {k.split(".", 1)[1] for k in v.metrics if k.startswith(_PREFIXES)}
    known = [m for m in _GATE_METRICS if m in v.metrics or m in compared]
    held = known + sorted(compared - set(known))
    if held:
        lines.append("Held-out metrics (candidate / serving when trained / base):")
        for metric in held:
            values = [v.metrics.get(p + metric) for p in ("", *_PREFIXES)]
            shown = " / ".join("–" if x is None else f"{x:.3g}" for x in values)
            lines.append(
                f"  {_name(metric)}: {shown}" + (" ◀ decides" if metric == decides else "")
            )
    other = {
        k: val for k, val in v.metrics.items() if k not in held and not k.startswith(_PREFIXES)
    }
    line = _settings_line("Training numbers", other)
    if line:
        lines.append(line)
    return lines


class LearningCommands:
    """Handlers of the learning loop's admin commands, by command name."""

    def __init__(self, service: ChatService) -> None:
        self._s = service
        self._tasks: set[asyncio.Task[None]] = set()

    def table(self) -> dict[str, Handler]:
        return {
            "finetune": self.finetune,
            "status": self.status,
            "adapters": self.adapters,
            "rollback": self.rollback,
            "activate": self.activate,
            "ab": self.ab,
            "stats": self.stats,
        }

    async def finetune(self, incoming: Incoming, _args: str) -> Reply:
        finetuner = self._s.finetuner
        if finetuner is None:
            return Reply("Fine-tuning is not available in this process.", ReplyKind.NOTICE)
        notify = self._admin_notifier(incoming)
        try:
            text = await finetuner.start(
                trigger="command", requested_by=incoming.user_key, notify=notify or _log_only
            )
        except (NothingToTrain, TrainingAlreadyRunning) as exc:
            return _private(str(exc), ReplyKind.NOTICE)
        if notify is None:
            task = asyncio.create_task(self._announce_end(incoming.chat_key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return _private(text)

    def _admin_notifier(self, incoming: Incoming) -> Notify | None:
        """Progress and the gate's verdict are admin output: for the admin's private chat.
        None when asked in a group on a platform where the core cannot write to them."""
        if incoming.is_private:
            return self._s.outbox.notifier(incoming.chat_key)
        return self._s.outbox.private_notifier(incoming.user_key)

    async def _announce_end(self, chat_key: str) -> None:
        """No private way to the admin: the group hears only that the run ended, no numbers."""
        assert self._s.finetuner is not None
        outcome = await self._s.finetuner.wait()
        if outcome is not None:
            await self._s.outbox.send(
                chat_key,
                f"Training run #{outcome.run_id} ended ({outcome.status}). "
                "Details for admins: /status, /adapters.",
            )

    async def status(self, _incoming: Incoming, _args: str) -> Reply:
        s = self._s
        counts = await s.repo.stats.counts()
        lines = [
            f"Model: {s.generator.model_name} (context {s.generator.context_window} tokens)",
            f"Serving: {describe(s.versions.current)}",
            f"Users {counts.users}, chats {counts.chats}, replies {counts.exchanges} "
            f"({counts.failed_exchanges} failed), ratings 👍 {counts.ups} / 👎 {counts.downs}",
            await self._training_line(),
        ]
        if s.finetuner is not None and (ab := await s.finetuner.ab.status()) is not None:
            lines.append(ab)
        return _private("\n".join(lines))

    async def _training_line(self) -> str:
        s = self._s
        running = await s.repo.runs.running()
        if running is not None:
            progress = s.finetuner.progress if s.finetuner else None
            step = (
                f", step {progress.step}/{progress.total_steps}"
                if isinstance(progress, Step)
                else f", {progress.phase}"
                if isinstance(progress, Phase)
                else ""
            )
            return f"Training: run #{running.id} running since {running.started_at:%H:%M} UTC{step}"
        runs = await s.repo.runs.recent(limit=1)
        if not runs:
            return "Training: none yet (/finetune)"
        return f"Last training: run #{runs[0].id} {runs[0].status} — {runs[0].message}"

    async def adapters(self, _incoming: Incoming, args: str) -> Reply:
        current, candidate = self._s.versions.current, self._s.versions.candidate
        if args.strip():
            number = version_arg(args, "/adapters [N]")
            if number is None:
                return _private(
                    "Version 0 is the base model: no adapter, nothing trained."
                    + (" It is serving." if current is None else "")
                )
            version = await self._s.repo.adapters.get(number)
            if version is None:
                raise VersionError(f"There is no adapter v{number}. See /adapters.")
            return _private(version_details(version, current, candidate))
        versions = await self._s.repo.adapters.all()
        if not versions:
            return _private("No adapter versions yet: serving the base model. /finetune makes one.")
        lines = [
            ("▶ " if v.version == current else "◐ " if v.version == candidate else "  ")
            + format_version(v)
            for v in versions
        ]
        lines.append(("▶ " if current is None else "  ") + "base model (version 0)")
        if candidate is not None:
            lines.append("◐ = the A/B test's candidate (/ab)")
        lines.append("/adapters N: hyperparameters, the gate's reasons, all metrics, exchanges.")
        return _private("\n".join(lines))

    async def rollback(self, _incoming: Incoming, args: str) -> Reply:
        target = version_arg(args, "/rollback [N]") if args else None
        if args and target is None:
            await self._s.versions.activate(None)
            now: int | None = None
        else:
            now = await self._s.versions.rollback(target)
        return _private(f"Rolled back: now serving {describe(now)}.")

    async def activate(self, _incoming: Incoming, args: str) -> Reply:
        if not args:
            raise VersionError("Usage: /activate N (0 is the base model). See /adapters.")
        version = version_arg(args, "/activate N")
        await self._s.versions.activate(version)
        return _private(f"Now serving {describe(version)}.")

    async def ab(self, incoming: Incoming, args: str) -> Reply:
        """/ab | /ab start N [share] | /ab promote | /ab retire"""
        if self._s.finetuner is None:
            return Reply("A/B tests are not available in this process.", ReplyKind.NOTICE)
        service = self._s.finetuner.ab
        action, *rest = args.split() or ["status"]
        if action == "start" and rest:
            version = version_arg(rest[0], "/ab start N [share]")
            if version is None:
                raise VersionError("The base model cannot be an A/B candidate; pick a version.")
            share = _share(rest[1]) if len(rest) > 1 else None
            return _private(await service.start(version, share, incoming.user_key))
        if action == "promote":
            return _private(await service.promote())
        if action in ("retire", "stop"):
            return _private(await service.retire())
        if action == "status":
            return _private(await service.status() or "No A/B test is running.")
        raise VersionError("Usage: /ab, /ab start N [share], /ab promote, /ab retire.")

    async def stats(self, _incoming: Incoming, _args: str) -> Reply:
        from bot.commands.charts import ratings_chart, ratings_table

        daily = await self._s.repo.stats.daily_ratings()
        if not daily:
            return _private("No ratings yet.")
        return Reply(
            ratings_table(daily), ReplyKind.COMMAND, image_png=ratings_chart(daily), private=True
        )


async def _log_only(text: str) -> None:
    log.info("training (not posted to the group): %s", text)


def _share(text: str) -> float:
    """'0.2', '20%' or '20' → 0.2."""
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise VersionError(f"{text!r} is not a share of chats; try 0.2 or 20%.") from None
    return value / 100 if value >= 1 or text.endswith("%") else value
