"""What each command does. Admin commands from non-admins are refused with a clear message."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.commands.learning import LearningCommands
from bot.commands.table import ParsedCommand, help_text
from bot.errors import VersionError
from bot.types import Incoming, Reply, ReplyKind

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)


def _reply(text: str, *, private: bool = False) -> Reply:
    return Reply(text, ReplyKind.COMMAND, private=private)


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
            "optout": self.optout,
            "optin": self.optin,
            **LearningCommands(service).table(),
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

    async def optout(self, incoming: Incoming, _args: str) -> Reply:
        await self._s.repo.set_training_opt_out(incoming.user_key, True)
        return _reply(
            "Done: from now on nothing you write or rate is used for training (what you "
            "already rated neither). /optin undoes it; /forget also deletes what is stored.",
            private=True,
        )

    async def optin(self, incoming: Incoming, _args: str) -> Reply:
        await self._s.repo.set_training_opt_out(incoming.user_key, False)
        return _reply(
            "Thanks: your messages and ratings may be used for training again.", private=True
        )
