"""Slash commands, built from the core's one command table (bot/commands/table.py).

Every command is acknowledged at once with a deferred "thinking" response (Discord allows 3 s;
a command may take longer), then answered by follow-ups. Admin commands answer ephemerally, so
only the person who asked sees their output; non-admins get the core's refusal, also privately.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from adapters.base import ChatCore, split_text
from adapters.discord.incoming import incoming_from_interaction
from adapters.discord.replies import MESSAGE_LIMIT, image_file
from adapters.discord.sdk import app_commands, discord
from bot.commands.table import COMMANDS, CommandSpec
from bot.types import Incoming, Reply, ReplyKind

log = logging.getLogger(__name__)

# /good and /bad are the buttons on Discord; /help says everything /start would; /better
# answers one of my messages (a reply), which a slash command cannot be.
NOT_SLASH = frozenset({"start", "good", "bad", "better"})

Interaction = discord.Interaction[discord.Client]
Runner = Callable[[Interaction, CommandSpec, str], Awaitable[None]]


def option_name(spec: CommandSpec) -> str:
    """The option's name on Discord: ``version`` for a number, else ``text``."""
    return "version" if spec.args.strip("[]").split()[0] == "N" else "text"


def _callback(run: Runner, spec: CommandSpec) -> Callable[..., Coroutine[Any, Any, None]]:
    """A callback whose signature tells discord.py the command's option (none, optional or
    required); discord.py reads the annotations, so they must stay real types."""
    if not spec.args:

        async def bare(interaction: discord.Interaction) -> None:
            await run(interaction, spec, "")

        return bare
    if spec.args.startswith("["):

        async def optional(interaction: discord.Interaction, value: str | None = None) -> None:
            await run(interaction, spec, value or "")

        chosen: Callable[..., Coroutine[Any, Any, None]] = optional
    else:

        async def required(interaction: discord.Interaction, value: str) -> None:
            await run(interaction, spec, value)

        chosen = required
    described = app_commands.describe(value=(spec.arg_help or spec.args)[:100])(chosen)
    return app_commands.rename(value=option_name(spec))(described)


class SlashCommands:
    """Registers the commands on a CommandTree and answers them through the chat core."""

    def __init__(
        self,
        service: ChatCore,
        admin_role_id: int | None,
        on_command: Callable[[Incoming], None] | None = None,
    ) -> None:
        self._service = service
        self._admin_role_id = admin_role_id
        self._on_command = on_command  # told of each command before the core runs it

    def register(self, tree: app_commands.CommandTree[Any]) -> list[str]:
        """Add every platform command to ``tree``; returns their names."""
        names = []
        for spec in COMMANDS:
            if spec.name in NOT_SLASH:
                continue
            command: app_commands.Command[Any, ..., None] = app_commands.Command(
                name=spec.name,
                description=(spec.help + (" (admin)" if spec.admin else ""))[:100],
                callback=_callback(self.run, spec),
            )
            tree.add_command(command)
            names.append(spec.name)
        tree.error(self.on_error)
        return names

    async def on_error(self, interaction: Interaction, error: app_commands.AppCommandError) -> None:
        """A command discord.py could not run (say, one removed since Discord last synced):
        answer anyway, privately, rather than leave "The application did not respond"."""
        log.warning("slash command failed: %s", error)
        text = "Sorry, that command is not available. Type / to see the current ones."
        if isinstance(error, app_commands.CommandNotFound):
            text = f"/{error.name} is not one of my commands (any more). Type /help."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    async def run(self, interaction: Interaction, spec: CommandSpec, args: str) -> None:
        """Defer within Discord's 3 s, ask the core, then follow up with its answer."""
        ephemeral = spec.private
        await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        text = f"/{spec.name} {args}".strip()
        incoming = incoming_from_interaction(interaction, text, self._admin_role_id)
        if self._on_command is not None:
            self._on_command(incoming)
        try:
            reply = await self._reply(incoming)
        except Exception as exc:
            log.exception("slash command /%s failed", spec.name)
            reply = Reply(f"Sorry, /{spec.name} failed ({type(exc).__name__}).", ReplyKind.ERROR)
        try:
            await self._follow_up(interaction, reply, ephemeral)
        except discord.HTTPException as exc:
            log.warning("could not answer /%s: %s", spec.name, exc)

    async def _reply(self, incoming: Incoming) -> Reply:
        async for item in self._service.respond(incoming):
            if isinstance(item, Reply):
                return item
        return Reply("Nothing to say.", ReplyKind.NOTICE)

    @staticmethod
    async def _follow_up(interaction: Interaction, reply: Reply, ephemeral: bool) -> None:
        if reply.private and not ephemeral:
            # The deferred placeholder is public; private output must not replace it.
            await interaction.delete_original_response()
            ephemeral = True
        pieces = split_text(reply.text.strip() or "…", MESSAGE_LIMIT)
        for index, piece in enumerate(pieces):
            extra: dict[str, Any] = {}
            if reply.image_png and index == len(pieces) - 1:
                extra["file"] = image_file(reply.image_png)
            await interaction.followup.send(piece, ephemeral=ephemeral, **extra)
