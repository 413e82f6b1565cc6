"""The admin commands of the learning loop: /finetune, /status, /adapters, /rollback,
/activate, /ab, /stats. Each returns one private Reply (admin output)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.finetune import NothingToTrain
from bot.types import AdapterVersion, Incoming, Reply, ReplyKind
from bot.versions import VersionError, describe
from storage.training_runs import TrainingAlreadyRunning

if TYPE_CHECKING:
    from bot.chat import ChatService

Handler = Callable[[Incoming, str], Awaitable[Reply]]
_SHOWN = (  # the metrics /adapters shows, in this order, with short names
    ("preference_accuracy", "pref. acc."),
    ("serving.preference_accuracy", "vs serving"),
    ("liked_nll", "liked NLL"),
    ("reward_margin", "reward margin"),
    ("train_loss", "train loss"),
)


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


def format_version(v: AdapterVersion) -> str:
    """One line per version: status, lineage, data, the numbers that matter, the gate."""
    shown = [f"{name} {v.metrics[key]:.3g}" for key, name in _SHOWN if key in v.metrics]
    gate = v.hyperparams.get("gate")
    verdict = f", gate: {gate.get('verdict')}" if isinstance(gate, dict) else ""
    method = v.hyperparams.get("method")
    took = f", {v.duration_s:.0f} s" if v.duration_s is not None else ""
    flags = " ⚠ trained on forgotten data" if v.tainted else ""
    return (
        f"v{v.version} [{v.status}] {v.created_at:%Y-%m-%d %H:%M} UTC, parent "
        f"{'v' + str(v.parent) if v.parent else 'base'}, "
        + (f"{str(method).upper()} " if method else "")
        + f"on {len(v.exchange_ids)} exchanges{took}"
        + (f"; {', '.join(shown)}" if shown else "")
        + verdict
        + flags
    )


class LearningCommands:
    """Handlers of the learning loop's admin commands, by command name."""

    def __init__(self, service: ChatService) -> None:
        self._s = service

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
        try:
            text = await finetuner.start(
                trigger="command",
                requested_by=incoming.user_key,
                notify=self._s.outbox.notifier(incoming.chat_key),
            )
        except (NothingToTrain, TrainingAlreadyRunning) as exc:
            return _private(str(exc), ReplyKind.NOTICE)
        return _private(text)

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
            progress = s.finetuner.progress if s.finetuner else {}
            step = (
                f", step {progress.get('step')}/{progress.get('total_steps')}"
                if progress.get("event") == "step"
                else f", {progress.get('phase')}"
                if progress.get("event") == "phase"
                else ""
            )
            return f"Training: run #{running.id} running since {running.started_at:%H:%M} UTC{step}"
        runs = await s.repo.runs.recent(limit=1)
        if not runs:
            return "Training: none yet (/finetune)"
        return f"Last training: run #{runs[0].id} {runs[0].status} — {runs[0].message}"

    async def adapters(self, _incoming: Incoming, _args: str) -> Reply:
        versions = await self._s.repo.adapters.all()
        if not versions:
            return _private("No adapter versions yet: serving the base model. /finetune makes one.")
        current, candidate = self._s.versions.current, self._s.versions.candidate
        lines = [
            ("▶ " if v.version == current else "◐ " if v.version == candidate else "  ")
            + format_version(v)
            for v in versions
        ]
        lines.append(("▶ " if current is None else "  ") + "base model (version 0)")
        if candidate is not None:
            lines.append("◐ = the A/B test's candidate (/ab)")
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
        from bot.charts import ratings_chart, ratings_table

        daily = await self._s.repo.stats.daily_ratings()
        if not daily:
            return _private("No ratings yet.")
        return Reply(
            ratings_table(daily), ReplyKind.COMMAND, image_png=ratings_chart(daily), private=True
        )


def _share(text: str) -> float:
    """'0.2', '20%' or '20' → 0.2."""
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise VersionError(f"{text!r} is not a share of chats; try 0.2 or 20%.") from None
    return value / 100 if value >= 1 or text.endswith("%") else value
