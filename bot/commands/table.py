"""One platform-independent command table: user commands and admin commands.

Every command is declared here once: its name, help, who may use it, who sees the answer, and
the function that answers it. Adapters register these names with their platform (Telegram's
setMyCommands, Discord's slash commands); the core parses and answers them the same way
everywhere; ``python -m bot.commands.docs`` writes README's command table from it.

Adding a command is one ``CommandSpec`` here plus one handler function (``handler`` names it).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CommandSpec:
    """One command, declared once: every platform's menu, /help, README and the router read it."""

    name: str
    help: str
    admin: bool = False  # only admins may use it
    private: bool = False  # only the asker sees the answer (admin output, /forget, …)
    # ``module:function`` under ``bot.commands`` that answers it: ``(context, incoming, args)``.
    handler: str = field(kw_only=True)
    args: str = ""  # usage of the argument, shown in /help; empty when it takes none
    arg_help: str = ""  # one-line description of the argument (Discord's option description)


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("start", "Say hello and show what I can do", handler="conversation:start"),
    CommandSpec("help", "List the commands", handler="conversation:help"),
    CommandSpec(
        "whoami",
        "Show your user key (what the admins setting lists) and this chat's key",
        handler="conversation:whoami",
    ),
    CommandSpec(
        "new",
        "Start a new conversation (I forget the context, not your ratings)",
        handler="conversation:new",
    ),
    CommandSpec(
        "persona",
        "Show or set my persona in this chat",
        handler="conversation:persona",
        args="[text | reset]",
        arg_help="How I should behave here; 'reset' returns to the default",
    ),
    CommandSpec("good", "Rate my last reply 👍", handler="conversation:good"),
    CommandSpec("bad", "Rate my last reply 👎", handler="conversation:bad"),
    CommandSpec(
        "better",
        "Teach me the reply you wanted (send it as a reply to my message)",
        handler="conversation:better",
        args="TEXT",
        arg_help="The reply you wanted to the message of mine you answer",
    ),
    CommandSpec(
        "forget",
        "Delete your messages and ratings; they are never trained on again",
        private=True,
        handler="conversation:forget",
    ),
    CommandSpec(
        "optout",
        "Keep your messages and ratings out of training from now on",
        private=True,
        handler="conversation:optout",
    ),
    CommandSpec(
        "optin",
        "Allow your messages and ratings in training again",
        private=True,
        handler="conversation:optin",
    ),
    CommandSpec(
        "finetune",
        "Fine-tune on the rated replies now",
        admin=True,
        private=True,
        handler="learning:finetune",
    ),
    CommandSpec(
        "status",
        "Model, adapter, training and counts",
        admin=True,
        private=True,
        handler="learning:status",
    ),
    CommandSpec(
        "adapters",
        "List the adapter versions (or show version N in full)",
        admin=True,
        private=True,
        handler="learning:adapters",
        args="[N]",
        arg_help="Version to show: hyperparameters, the gate's reasons, metrics, exchanges",
    ),
    CommandSpec(
        "rollback",
        "Go back to the previous adapter (or to version N)",
        admin=True,
        private=True,
        handler="learning:rollback",
        args="[N]",
        arg_help="Version to return to; 0 is the base model",
    ),
    CommandSpec(
        "activate",
        "Serve adapter version N (0 = base model)",
        admin=True,
        private=True,
        handler="learning:activate",
        args="N",
        arg_help="Adapter version; 0 is the base model",
    ),
    CommandSpec(
        "ab",
        "A/B test: show it, start one, promote or retire the candidate",
        admin=True,
        private=True,
        handler="learning:ab",
        args="[start N [share] | promote | retire]",
        arg_help="'start 3 0.2' serves v3 to 20% of chats; 'promote' or 'retire' ends the test",
    ),
    CommandSpec(
        "stats",
        "Ratings over time per adapter version, as a chart",
        admin=True,
        private=True,
        handler="learning:stats",
    ),
    CommandSpec(
        "block",
        "Block a user: one notice, then no answers; their ratings never train",
        admin=True,
        private=True,
        handler="access:block",
        args="USER_KEY",
        arg_help="The user's key, e.g. telegram:42 (the dashboard's Users page lists them)",
    ),
    CommandSpec(
        "unblock",
        "Lift a user's block",
        admin=True,
        private=True,
        handler="access:unblock",
        args="USER_KEY",
        arg_help="The user's key, e.g. telegram:42",
    ),
    CommandSpec(
        "dashboard",
        "A one-time login link to the web dashboard",
        admin=True,
        private=True,
        handler="access:dashboard",
    ),
)

BY_NAME = {spec.name: spec for spec in COMMANDS}

# Rating shortcuts the console accepts as whole lines.
SHORTCUTS = {"+": "/good", "-": "/bad", "👍": "/good", "👎": "/bad"}


@dataclass(frozen=True)
class ParsedCommand:
    """A command as typed: its name, its argument text, and its spec (None: unknown)."""

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
    """The /help answer: the commands this user may use, with their usage."""
    lines = ["Talk to me in plain text. Rate my replies with 👍/👎 — I learn from them.", ""]
    for spec in COMMANDS:
        if spec.admin and not is_admin:
            continue
        usage = f"/{spec.name}" + (f" {spec.args}" if spec.args else "")
        lines.append(f"{usage} — {spec.help}" + (" (admin)" if spec.admin else ""))
    return "\n".join(lines)
