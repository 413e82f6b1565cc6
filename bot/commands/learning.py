"""The admin commands of the learning loop: finetune, status, adapters, rollback, activate, ab,
stats. Each is ``async (context, incoming, args) -> Reply``; their answers are admin output,
private by their specs (``table.py``), and training progress and the gate's verdict go to the
admin's private chat too (bot/outbox.py). A request that cannot be done raises a ``UserError``,
which the router shows as a notice."""

from __future__ import annotations

import asyncio
import logging

from bot.commands.args import share_arg, version_arg
from bot.commands.context import CommandContext
from bot.commands.views import (
    CANDIDATE_MARK,
    SERVING_MARK,
    format_version,
    mark,
    version_details,
)
from bot.errors import VersionError
from bot.learning.protocol import Phase, Step
from bot.learning.versions import describe
from bot.learning.watcher import chat_address, group_address, private_address
from bot.outbox import Notify
from bot.types import Incoming, Reply, ReplyKind, RunStatus

log = logging.getLogger(__name__)


def _reply(text: str) -> Reply:
    return Reply(text, ReplyKind.COMMAND)


async def finetune(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """Start a training run in the background; progress goes to the admin privately."""
    notify = _admin_notifier(ctx, incoming)
    text = await ctx.finetuner.start(
        trigger="command",
        requested_by=incoming.user_key,
        notify=notify or _log_only,
        notify_to=_address(ctx, incoming),  # a queued run's result: told by a serving process
    )
    if notify is None and ctx.finetuner.running:
        task = asyncio.create_task(_announce_end(ctx, incoming.chat_key))
        ctx.background.add(task)
        task.add_done_callback(ctx.background.discard)
    return _reply(text)


def _admin_notifier(ctx: CommandContext, incoming: Incoming) -> Notify | None:
    """Progress and the gate's verdict are admin output: for the admin's private chat.
    None when asked in a group on a platform where the core cannot write to them."""
    if incoming.is_private:
        return ctx.outbox.notifier(incoming.chat_key)
    return ctx.outbox.private_notifier(incoming.user_key)


def _address(ctx: CommandContext, incoming: Incoming) -> str:
    """Where a queued run's result is told: as ``_admin_notifier`` would tell it."""
    if incoming.is_private:
        return chat_address(incoming.chat_key)
    if ctx.outbox.private_notifier(incoming.user_key) is not None:
        return private_address(incoming.user_key)
    return group_address(incoming.chat_key)


async def _announce_end(ctx: CommandContext, chat_key: str) -> None:
    """No private way to the admin: the group hears only that the run ended, no numbers."""
    outcome = await ctx.finetuner.wait()
    if outcome is not None:
        await ctx.outbox.send(
            chat_key,
            f"Training run #{outcome.run_id} ended ({outcome.status}). "
            "Details for admins: /status, /adapters.",
        )


async def status(ctx: CommandContext, _incoming: Incoming, _args: str) -> Reply:
    """The model, the serving adapter, counts, training, and the A/B test if one runs."""
    counts = await ctx.repo.stats.counts()
    lines = [
        f"Model: {ctx.generator.model_name} (context {ctx.generator.context_window} tokens)",
        f"Serving: {describe(ctx.versions.current)}",
        f"Users {counts.users}, chats {counts.chats}, replies {counts.exchanges} "
        f"({counts.failed_exchanges} failed), ratings 👍 {counts.ups} / 👎 {counts.downs}",
        await _training_line(ctx),
    ]
    if (ab := await ctx.ab.status()) is not None:
        lines.append(ab)
    return _reply("\n".join(lines))


async def _training_line(ctx: CommandContext) -> str:
    running = await ctx.repo.runs.pending()
    if running is not None and running.status == RunStatus.QUEUED:
        return (
            f"Training: run #{running.id} queued since {running.started_at:%H:%M} UTC, "
            "waiting for a trainer (selftune trainer)"
        )
    if running is not None and running.host is not None:
        return (
            f"Training: run #{running.id} running on trainer {running.host} "
            f"since {running.started_at:%H:%M} UTC"
        )
    if running is not None:
        progress = ctx.finetuner.progress
        step = (
            f", step {progress.step}/{progress.total_steps}"
            if isinstance(progress, Step)
            else f", {progress.phase}"
            if isinstance(progress, Phase)
            else ""
        )
        return f"Training: run #{running.id} running since {running.started_at:%H:%M} UTC{step}"
    runs = await ctx.repo.runs.recent(limit=1)
    if not runs:
        return "Training: none yet (/finetune)"
    return f"Last training: run #{runs[0].id} {runs[0].status} — {runs[0].message}"


async def adapters(ctx: CommandContext, _incoming: Incoming, args: str) -> Reply:
    """Every adapter version, one line each; ``/adapters N``: version N in full."""
    current, candidate = ctx.versions.current, ctx.versions.candidate
    if args.strip():
        return await _one_version(ctx, version_arg(args, "/adapters [N]"))
    versions = await ctx.repo.adapters.all()
    if not versions:
        return _reply("No adapter versions yet: serving the base model. /finetune makes one.")
    lines = [
        mark(v.version == current, v.version == candidate) + format_version(v) for v in versions
    ]
    lines.append(mark(current is None) + "base model (version 0)")
    lines.append(f"{SERVING_MARK} = serving now")
    if candidate is not None:
        lines.append(f"{CANDIDATE_MARK} = the A/B test's candidate (/ab)")
    lines.append("/adapters N: hyperparameters, the gate's reasons, all metrics, exchanges.")
    return _reply("\n".join(lines))


async def _one_version(ctx: CommandContext, number: int | None) -> Reply:
    current, candidate = ctx.versions.current, ctx.versions.candidate
    if number is None:
        return _reply(
            "Version 0 is the base model: no adapter, nothing trained."
            + (" It is serving." if current is None else "")
        )
    version = await ctx.repo.adapters.get(number)
    if version is None:
        raise VersionError(f"There is no adapter v{number}. See /adapters.")
    return _reply(version_details(version, current, candidate))


async def rollback(ctx: CommandContext, _incoming: Incoming, args: str) -> Reply:
    """Serve the previous adapter (or version N; 0 is the base model)."""
    target = version_arg(args, "/rollback [N]") if args else None
    if args and target is None:
        await ctx.versions.activate(None)
        now: int | None = None
    else:
        now = await ctx.versions.rollback(target)
    return _reply(f"Rolled back: now serving {describe(now)}.")


async def activate(ctx: CommandContext, _incoming: Incoming, args: str) -> Reply:
    """Serve version N (0 is the base model) at once."""
    if not args:
        raise VersionError("Usage: /activate N (0 is the base model). See /adapters.")
    version = version_arg(args, "/activate N")
    await ctx.versions.activate(version)
    return _reply(f"Now serving {describe(version)}.")


async def ab(ctx: CommandContext, incoming: Incoming, args: str) -> Reply:
    """/ab | /ab start N [share] | /ab promote | /ab retire"""
    action, *rest = args.split() or ["status"]
    if action == "start" and rest:
        version = version_arg(rest[0], "/ab start N [share]")
        if version is None:
            raise VersionError("The base model cannot be an A/B candidate; pick a version.")
        share = share_arg(rest[1]) if len(rest) > 1 else None
        return _reply(await ctx.ab.start(version, share, incoming.user_key))
    if action == "promote":
        return _reply(await ctx.ab.promote())
    if action in ("retire", "stop"):
        return _reply(await ctx.ab.retire())
    if action == "status":
        return _reply(await ctx.ab.status() or "No A/B test is running.")
    raise VersionError("Usage: /ab, /ab start N [share], /ab promote, /ab retire.")


async def stats(ctx: CommandContext, _incoming: Incoming, _args: str) -> Reply:
    """Ratings per day and adapter version: a chart and the numbers."""
    from bot.commands.charts import (  # matplotlib: only when asked
        ratings_chart,
        ratings_table,
        signals_table,
    )

    daily = await ctx.repo.stats.daily_ratings()
    if not daily:
        return _reply("No ratings yet.")
    chart = await asyncio.to_thread(ratings_chart, daily)  # rendering takes ~0.1 s: off the loop
    signals = signals_table(await ctx.repo.signals.counts(), len(await ctx.repo.training.pairs()))
    text = f"{ratings_table(daily)}\n{signals}"
    return Reply(text, ReplyKind.COMMAND, image_png=chart)


async def _log_only(text: str) -> None:
    log.info("training (not posted to the group): %s", text)
