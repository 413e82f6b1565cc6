"""The command table is the one declaration of a command: every spec names a handler that
exists, every handler has a spec, answers are as private as the spec says, the router turns a
UserError (and only that) into a notice, and README's command table is made from it."""

from __future__ import annotations

import inspect
from dataclasses import replace
from types import ModuleType

import pytest

from bot.app import Core
from bot.commands import access, conversation, learning
from bot.commands.context import CommandContext
from bot.commands.docs import README, readme_with_table
from bot.commands.router import CommandRouter, resolve
from bot.commands.table import BY_NAME, COMMANDS, CommandSpec, help_text, parse_command
from bot.errors import VersionError
from bot.types import Incoming, Reply, ReplyKind
from tests.support.records import say

ADMIN = Incoming("console", "local", "local", "Ann", "")
GUEST = Incoming("telegram", "-100", "7", "Bob", "", is_private=False)
HANDLER_MODULES: tuple[ModuleType, ...] = (access, conversation, learning)


def _handlers(module: ModuleType) -> set[str]:
    """``module:function`` of the public coroutine functions a handler module defines."""
    name = module.__name__.rsplit(".", 1)[-1]
    return {
        f"{name}:{function}"
        for function, value in vars(module).items()
        if inspect.iscoroutinefunction(value)
        and not function.startswith("_")
        and value.__module__ == module.__name__
    }


def _context(core: Core) -> CommandContext:
    """What build_core gives the router, from the core's parts."""
    return CommandContext(
        settings=core.settings,
        repo=core.repo,
        generator=core.generator,
        versions=core.versions,
        finetuner=core.finetuner,
        ab=core.ab,
        outbox=core.outbox,
    )


def test_every_spec_names_a_handler_and_every_handler_has_a_spec() -> None:
    for spec in COMMANDS:
        handler = resolve(spec)
        assert inspect.iscoroutinefunction(handler), spec.name
        assert list(inspect.signature(handler).parameters)[:1] == ["ctx"], spec.name
    declared = {spec.handler for spec in COMMANDS}
    defined = set().union(*map(_handlers, HANDLER_MODULES))
    assert declared == defined
    assert len(declared) == len(COMMANDS)  # one handler per command


def test_a_spec_naming_no_function_fails_at_once() -> None:
    with pytest.raises(LookupError, match="conversation:nowhere"):
        resolve(CommandSpec("x", "y", handler="conversation:nowhere"))


def test_admin_output_is_private() -> None:
    assert all(spec.private for spec in COMMANDS if spec.admin)
    assert {s.name for s in COMMANDS if s.private and not s.admin} == {"forget", "optout", "optin"}


def test_the_new_commands_are_in_the_table() -> None:
    assert not BY_NAME["optout"].admin and not BY_NAME["optin"].admin
    assert BY_NAME["ab"].admin and BY_NAME["ab"].args.startswith("[")
    assert "/optout" in help_text(False) and "/ab" not in help_text(False)
    assert all(len(spec.help) <= 100 and len(spec.arg_help) <= 100 for spec in BY_NAME.values())


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda spec: spec.name)
async def test_every_answer_is_as_private_as_declared(core: Core, spec: CommandSpec) -> None:
    reply = await say(core, ADMIN, f"/{spec.name}")
    assert reply.private is spec.private, reply


async def test_refusals_and_unknown_commands_are_said_in_the_chat(core: Core) -> None:
    refused = await say(core, GUEST, "/status")
    unknown = await say(core, GUEST, "/frobnicate")
    assert refused.kind is unknown.kind is ReplyKind.NOTICE
    assert not refused.private and not unknown.private


async def test_a_user_error_is_a_notice_and_a_bug_is_not_hidden(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuses(*_args: object) -> Reply:
        raise VersionError("There is no adapter v9.")

    async def breaks(*_args: object) -> Reply:
        raise RuntimeError("a bug")

    monkeypatch.setattr(learning, "status", refuses)
    monkeypatch.setattr(conversation, "new", breaks)
    route = CommandRouter(_context(core))
    admin = replace(ADMIN, text="")
    notice = await route(admin, parse_command("/status") or pytest.fail())
    assert notice == Reply("There is no adapter v9.", ReplyKind.NOTICE, private=True)
    with pytest.raises(RuntimeError, match="a bug"):
        await route(admin, parse_command("/new") or pytest.fail())


def test_readme_command_table_is_current() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "<!-- command-table:begin -->" in readme
    assert readme_with_table(readme) == readme, "run python -m bot.commands.docs"
    assert "(console: `+`, `👍`)" in readme and "(console: `-`, `👎`)" in readme
