"""What each command does. Admin commands from non-admins are refused with a clear message."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.commands import ParsedCommand, help_text
from bot.finetune import NothingToTrain
from bot.types import AdapterVersion, Incoming, Reply, ReplyKind
from bot.versions import VersionError, describe
from storage.repository import TrainingAlreadyRunning

if TYPE_CHECKING:
    from bot.chat import ChatService

log = logging.getLogger(__name__)


def _reply(text: str, *, private: bool = False) -> Reply:
    return Reply(text, ReplyKind.COMMAND, private=private)


def _version_arg(args: str, usage: str) -> int | None:
    """'3' → 3, '0' / 'base' → None (the base model); anything else is a usage error."""
    value = args.strip().lower().lstrip("v")
    if value in ("0", "base"):
        return None
    if not value.isdigit():
        raise VersionError(f"Usage: {usage} (a version number; 0 is the base model).")
    return int(value)


def format_version(v: AdapterVersion) -> str:
    metrics = ", ".join(f"{k} {val:.3g}" for k, val in sorted(v.metrics.items()))
    flags = " ⚠ trained on forgotten data" if v.tainted else ""
    return (
        f"v{v.version} [{v.status}] {v.created_at:%Y-%m-%d %H:%M} UTC, parent "
        f"{'v' + str(v.parent) if v.parent else 'base'}, {len(v.exchange_ids)} exchanges"
        + (f", {metrics}" if metrics else "")
        + flags
    )


class CommandHandlers:
    """Routes parsed commands to handlers; each returns one Reply."""

    def __init__(self, service: ChatService) -> None:
        self._s = service
        self._table: dict[str, Callable[[Incoming, str], Awaitable[Reply]]] = {
            "start": self.start,
            "help": self.help,
            "new": self.new,
            "persona": self.persona,
            "good": self.good,
            "bad": self.bad,
            "forget": self.forget,
            "finetune": self.finetune,
            "status": self.status,
            "adapters": self.adapters,
            "rollback": self.rollback,
            "activate": self.activate,
            "stats": self.stats,
        }

    async def handle(self, incoming: Incoming, command: ParsedCommand) -> Reply:
        if command.spec is None:
            return Reply(
                f"Unknown command /{command.name}. Type /help for the list.", ReplyKind.NOTICE
            )
        if command.spec.admin and not self._s.is_admin(incoming):
            return Reply(
                f"/{command.name} is for admins only. An admin adds your user key "
                f"({incoming.user_key}) to `admins` in the configuration.",
                ReplyKind.NOTICE,
            )
        try:
            return await self._table[command.name](incoming, command.args)
        except VersionError as exc:
            return Reply(str(exc), ReplyKind.NOTICE, private=command.spec.admin)

    async def start(self, incoming: Incoming, _args: str) -> Reply:
        admin = self._s.is_admin(incoming)
        return _reply(
            f"Hello, {incoming.user_name or 'there'}! I am a chat bot that learns "
            f"from your ratings.\n\n{help_text(admin)}"
        )

    async def help(self, incoming: Incoming, _args: str) -> Reply:
        return _reply(help_text(self._s.is_admin(incoming)))

    async def new(self, incoming: Incoming, _args: str) -> Reply:
        await self._s.repo.new_conversation(incoming.chat_key)
        return _reply("Started a new conversation. Earlier messages and ratings are kept.")

    async def persona(self, incoming: Incoming, args: str) -> Reply:
        repo, limit = self._s.repo, self._s.settings.chat.max_persona_chars
        if not args:
            chat = await repo.chat(incoming.chat_key)
            current = chat.persona or f"(default) {self._s.settings.chat.system_prompt}"
            return _reply(
                f"My persona here: {current}\nChange it with /persona <text>, or /persona reset."
            )
        if args.lower() in ("reset", "default", "clear"):
            await repo.set_persona(incoming.chat_key, None)
            return _reply("Persona reset to the default.")
        if len(args) > limit:
            return Reply(
                f"That persona is {len(args)} characters; the limit is {limit}.", ReplyKind.NOTICE
            )
        await repo.set_persona(incoming.chat_key, args)
        return _reply(f"Persona set. From now on: {args}")

    async def good(self, incoming: Incoming, _args: str) -> Reply:
        return await self._s.rate_last(incoming, "good")

    async def bad(self, incoming: Incoming, _args: str) -> Reply:
        return await self._s.rate_last(incoming, "bad")

    async def forget(self, incoming: Incoming, _args: str) -> Reply:
        report = await self._s.repo.forget_user(incoming.user_key)
        tainted = (
            f" {len(report.tainted_versions)} adapter version(s) trained on them are marked."
            if report.tainted_versions
            else ""
        )
        return _reply(
            f"Done: deleted {report.messages} messages, {report.exchanges} exchanges and "
            f"{report.ratings} ratings of yours. They will not be used for training.{tainted}",
            private=True,
        )

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
            return Reply(str(exc), ReplyKind.NOTICE, private=True)
        return _reply(text, private=True)

    async def status(self, _incoming: Incoming, _args: str) -> Reply:
        s = self._s
        counts = await s.repo.counts()
        running = await s.repo.running_training()
        runs = await s.repo.training_runs(limit=1)
        lines = [
            f"Model: {s.generator.model_name} (context {s.generator.context_window} tokens)",
            f"Serving: {describe(s.versions.current)}",
            f"Users {counts.users}, chats {counts.chats}, replies {counts.exchanges} "
            f"({counts.failed_exchanges} failed), ratings 👍 {counts.ups} / 👎 {counts.downs}",
        ]
        if running is not None:
            progress = s.finetuner.progress if s.finetuner else {}
            step = (
                f", step {progress.get('step')}/{progress.get('total_steps')}"
                if progress.get("event") == "step"
                else ""
            )
            lines.append(
                f"Training: run #{running.id} running since {running.started_at:%H:%M} UTC{step}"
            )
        elif runs:
            lines.append(f"Last training: run #{runs[0].id} {runs[0].status} — {runs[0].message}")
        return _reply("\n".join(lines), private=True)

    async def adapters(self, _incoming: Incoming, _args: str) -> Reply:
        versions = await self._s.repo.adapter_versions()
        if not versions:
            return _reply(
                "No adapter versions yet: serving the base model. /finetune makes one.",
                private=True,
            )
        current = self._s.versions.current
        lines = [("▶ " if v.version == current else "  ") + format_version(v) for v in versions]
        lines.append(("▶ " if current is None else "  ") + "base model (version 0)")
        return _reply("\n".join(lines), private=True)

    async def rollback(self, _incoming: Incoming, args: str) -> Reply:
        target = _version_arg(args, "/rollback [N]") if args else None
        if args and target is None:
            await self._s.versions.activate(None)
            now: int | None = None
        else:
            now = await self._s.versions.rollback(target)
        return _reply(f"Rolled back: now serving {describe(now)}.", private=True)

    async def activate(self, _incoming: Incoming, args: str) -> Reply:
        if not args:
            raise VersionError("Usage: /activate N (0 is the base model). See /adapters.")
        version = _version_arg(args, "/activate N")
        await self._s.versions.activate(version)
        return _reply(f"Now serving {describe(version)}.", private=True)

    async def stats(self, _incoming: Incoming, _args: str) -> Reply:
        from bot.charts import ratings_chart, ratings_table

        daily = await self._s.repo.daily_ratings()
        if not daily:
            return _reply("No ratings yet.", private=True)
        return Reply(
            ratings_table(daily), ReplyKind.COMMAND, image_png=ratings_chart(daily), private=True
        )
