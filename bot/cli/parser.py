"""The ``selftune`` argument parser: every subcommand with what it does and an example.

``--config`` and ``--verbose`` are accepted before the subcommand and after it
(``selftune train --config prod.toml``); the subcommand's copy is given with a default of
"not given", so it never hides one given before the subcommand.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bot.cli import install

if TYPE_CHECKING:  # argparse's class is not subscriptable at run time
    _Sub = argparse._SubParsersAction[argparse.ArgumentParser]

CONFIG_HELP = (
    "TOML config file. Without it: $SELFTUNE_CONFIG, else ./selftune.toml, else "
    "~/.config/selftune/config.toml, else the defaults. SELFTUNE_* environment variables "
    "override the file, key by key."
)
VERBOSE_HELP = "also print INFO logs to stderr (they always go to <data_dir>/logs/selftune.log)"
_EPILOG = """\
examples:
  selftune chat                        chat in the terminal (the default model downloads once)
  selftune run --config selftune.toml  serve Telegram and/or Discord
  selftune config example -o selftune.toml
  selftune COMMAND --help              what a command does, with an example

configuration: --config FILE, else $SELFTUNE_CONFIG, else ./selftune.toml, else
~/.config/selftune/config.toml; SELFTUNE_* environment variables override the file.
logs: <data_dir>/logs/selftune.log (stderr shows warnings; --verbose shows everything)."""


def _common(default: object) -> argparse.ArgumentParser:
    """--config and --verbose, for the top level (``default``: None) and for every subcommand
    (``default``: SUPPRESS, so that an absent one leaves the top level's value)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=default, help=CONFIG_HELP)
    common.add_argument("-v", "--verbose", action="store_true", default=default, help=VERBOSE_HELP)
    return common


def _action(sub: _Sub, name: str, summary: str) -> argparse.ArgumentParser:
    """An action of a subcommand (``db current``); it takes --config and --verbose too."""
    return sub.add_parser(name, help=summary, parents=[_common(argparse.SUPPRESS)])


def _command(sub: _Sub, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does (``summary``) with an ``example``."""
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(argparse.SUPPRESS)],
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``selftune`` command line."""
    parser = argparse.ArgumentParser(
        prog="selftune",
        description="A chat bot that answers with its own local model and learns from 👍/👎.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(None)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {install.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serving(sub)
    _adapters(sub)
    _data(sub)
    install.add_config_parser(sub, parents=[_common(argparse.SUPPRESS)])
    return parser


def _serving(sub: _Sub) -> None:
    _command(
        sub,
        "run",
        "serve every configured platform (Telegram, Discord; the console if none) "
        "until stopped; the default command",
        "TELEGRAM_BOT_TOKEN=123:abc selftune run",
    )
    _command(
        sub,
        "chat",
        "chat with the bot in the terminal as console:local (an admin); "
        "end with Ctrl-D, or pipe lines in",
        "printf 'Hello!\\n+\\n/finetune\\n' | selftune chat",
    )
    train = _command(
        sub,
        "train",
        "fine-tune on the rated replies now, in the foreground; a running bot picks the "
        "result up. Exit status 0 trained, 3 rejected by the gate, 1 nothing to do or failed",
        "selftune train --config selftune.toml",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    worker = _command(
        sub,
        "trainer",
        "run a trainer worker: take the training runs queued in the database (serving "
        "processes with training.runner = 'queue' queue them), train each (on a GPU when it "
        "has one: training.device), publish and release the adapter; SIGTERM or Ctrl-C "
        "puts the run it trains back in the queue",
        "selftune trainer --config trainer.toml",
    )
    worker.add_argument(
        "--once", action="store_true", help="stop when the queue is empty instead of waiting"
    )


def _adapters(sub: _Sub) -> None:
    adapters = _command(
        sub,
        "adapters",
        "list the adapter versions (▶ marks the one serving), activate one or roll back",
        "selftune adapters activate 2",
    )
    actions = adapters.add_subparsers(dest="action", metavar="ACTION")
    _action(actions, "list", "list the versions (default)")
    activate = _action(actions, "activate", "serve version N (0 = base model)")
    activate.add_argument("version")  # parsed strictly by maintenance (bot.commands.args)
    rollback = _action(actions, "rollback", "back to the previous version (or to N)")
    rollback.add_argument("version", nargs="?")


def _data(sub: _Sub) -> None:
    export = _command(
        sub,
        "export",
        "write the rated exchanges as JSONL in TRL's KTO format (prompt, completion, label)",
        "selftune export --with-meta -o ratings.jsonl",
    )
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.add_argument(
        "--with-meta",
        action="store_true",
        help="add each row's exchange id, rater, adapter version and rating time",
    )
    export.add_argument(
        "--pairs",
        action="store_true",
        help="write the preference pairs instead (🔄 alternatives and /better corrections), "
        "in TRL's preference format (prompt, chosen, rejected)",
    )
    db = _command(
        sub,
        "db",
        "database maintenance: apply pending migrations, show the schema revision, back up",
        "selftune db backup /var/backups/selftune/$(date +%F)",
    )
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    _action(actions, "upgrade", "apply pending migrations (start-up does it too)")
    _action(actions, "current", "show the schema revision (creates nothing)")
    backup = _action(actions, "backup", "copy the database (online) and the adapters to PATH")
    backup.add_argument("path", type=Path, help="a new (or empty) folder")
