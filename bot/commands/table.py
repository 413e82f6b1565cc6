"""One platform-independent command table: user commands and admin commands.

Adapters register these names with their platform (Telegram's setMyCommands, Discord's slash
commands); the core parses and answers them the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.types import Incoming, Reply, Vote


@dataclass(frozen=True)
class CommandSpec:
    """One command, declared once: every platform's menu, /help and the router read it."""

    name: str
    help: str
    admin: bool = False
    args: str = ""  # usage of the argument, shown in /help; empty when it takes none
    arg_help: str = ""  # one-line description of the argument (Discord's option description)
    private_answer: bool = False  # only the asker sees the answer (admin answers always are)
    handler: str = ""  # the handler's name; default: the command's name

    @property
    def private(self) -> bool:
        """Whether the answer is for the asker only: admin output, and what says so."""
        return self.admin or self.private_answer

    @property
    def handler_name(self) -> str:
        """The name of the function that answers this command."""
        return self.handler or self.name


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("start", "Say hello and show what I can do"),
    CommandSpec("help", "List the commands"),
    CommandSpec("new", "Start a new conversation (I forget the context, not your ratings)"),
    CommandSpec(
        "persona",
        "Show or set my persona in this chat",
        args="[text | reset]",
        arg_help="How I should behave here; 'reset' returns to the default",
    ),
    CommandSpec("good", "Rate my last reply 👍"),
    CommandSpec("bad", "Rate my last reply 👎"),
    CommandSpec(
        "forget",
        "Delete your messages and ratings; they are never trained on again",
        private_answer=True,
    ),
    CommandSpec(
        "optout", "Keep your messages and ratings out of training from now on", private_answer=True
    ),
    CommandSpec("optin", "Allow your messages and ratings in training again", private_answer=True),
    CommandSpec("finetune", "Fine-tune on the rated replies now", admin=True),
    CommandSpec("status", "Model, adapter, training and counts", admin=True),
    CommandSpec(
        "adapters",
        "List the adapter versions (or show version N in full)",
        admin=True,
        args="[N]",
        arg_help="Version to show: hyperparameters, the gate's reasons, metrics, exchanges",
    ),
    CommandSpec(
        "rollback",
        "Go back to the previous adapter (or to version N)",
        admin=True,
        args="[N]",
        arg_help="Version to return to; 0 is the base model",
    ),
    CommandSpec(
        "activate",
        "Serve adapter version N (0 = base model)",
        admin=True,
        args="N",
        arg_help="Adapter version; 0 is the base model",
    ),
    CommandSpec(
        "ab",
        "A/B test: show it, start one, promote or retire the candidate",
        admin=True,
        args="[start N [share] | promote | retire]",
        arg_help="'start 3 0.2' serves v3 to 20% of chats; 'promote' or 'retire' ends the test",
    ),
    CommandSpec("stats", "Ratings over time per adapter version, as a chart", admin=True),
)

BY_NAME = {spec.name: spec for spec in COMMANDS}

# Rating shortcuts the console accepts as whole lines.
SHORTCUTS = {"+": "/good", "-": "/bad", "👍": "/good", "👎": "/bad"}
VOTES = {"good": Vote.UP, "bad": Vote.DOWN}


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    args: str
    spec: CommandSpec | None  # None: not a command we know


def parse_command(text: str, bot_username: str | None = None) -> ParsedCommand | None:
    """``/name@bot args`` → ParsedCommand; None when the text is not a command at all.

    A command addressed to another bot (``/help@otherbot``) is not ours: None.
    """
    text = SHORTCUTS.get(text.strip(), text)
    if not text.startswith("/") or text.startswith("//") or len(text) < 2:
        return None
    head, _, args = text[1:].partition(" ")
    name, _, target = head.partition("@")
    if target and bot_username and target.lower() != bot_username.lower():
        return None
    name = name.lower()
    return ParsedCommand(name=name, args=args.strip(), spec=BY_NAME.get(name))


def help_text(is_admin: bool) -> str:
    lines = ["Talk to me in plain text. Rate my replies with 👍/👎 — I learn from them.", ""]
    for spec in COMMANDS:
        if spec.admin and not is_admin:
            continue
        usage = f"/{spec.name}" + (f" {spec.args}" if spec.args else "")
        lines.append(f"{usage} — {spec.help}" + (" (admin)" if spec.admin else ""))
    return "\n".join(lines)


Handler = Callable[[Incoming, str], Awaitable[Reply]]
