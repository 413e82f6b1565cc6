"""Routes a parsed command to the handler its spec names, with the admin check.

The spec (``table.py``) is the one source of who may use a command and who sees the answer: the
router refuses admin commands to others, and marks every answer private as the spec says. A
``UserError`` (a request that cannot be done) becomes a notice; other errors are bugs and
propagate.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import cast

from bot.commands.args import shown
from bot.commands.context import CommandContext, Handler
from bot.commands.table import COMMANDS, CommandSpec, ParsedCommand
from bot.errors import UserError
from bot.types import Incoming, Reply, ReplyKind

_PACKAGE = "bot.commands"


def resolve(spec: CommandSpec) -> Handler:
    """The function ``spec.handler`` names (``module:function`` under ``bot.commands``)."""
    module_name, _, function = spec.handler.partition(":")
    module = importlib.import_module(f"{_PACKAGE}.{module_name}")
    handler = getattr(module, function, None)
    if not callable(handler):
        raise LookupError(f"/{spec.name}: {_PACKAGE}.{spec.handler} is not a function")
    return cast(Handler, handler)


class CommandRouter:
    """``route(incoming, command) -> Reply`` for the ChatService; handlers get the context."""

    def __init__(self, context: CommandContext) -> None:
        self._context = context
        # Resolved once, at start-up: a spec naming a missing handler fails there, not in a chat.
        self._handlers = {spec.name: resolve(spec) for spec in COMMANDS}

    async def __call__(self, incoming: Incoming, command: ParsedCommand) -> Reply:
        spec = command.spec
        if spec is None:
            return Reply(
                f"Unknown command /{shown(command.name)}. Type /help for the list.",
                ReplyKind.NOTICE,
            )
        if spec.admin and not self._context.is_admin(incoming):
            return Reply(
                f"/{command.name} is for admins only. An admin adds your user key "
                f"({incoming.user_key}) to `admins` in the configuration.",
                ReplyKind.NOTICE,
            )
        try:
            reply = await self._handlers[spec.name](self._context, incoming, command.args)
        except UserError as exc:
            reply = Reply(str(exc), ReplyKind.NOTICE)
        return replace(reply, private=spec.private)
