"""The ``selftune`` command: the parser and its dispatch (entry point ``bot.cli:main``).

- ``__init__``: arguments, configuration loading, the subcommands that serve (run, chat)
- ``maintenance.py``: the subcommands that do not serve (train, adapters, export, db)
- ``install.py``: what needs no configuration: ``--version``, ``config example``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.cli import install
from bot.errors import ConfigError
from bot.logs import settings_secrets, setup_logging
from bot.settings import Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selftune",
        description="A chat bot that answers with its own local model and learns from 👍/👎.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default: ./selftune.toml, "
        "$SELFTUNE_CONFIG or ~/.config/selftune/config.toml)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {install.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="serve every configured platform (the console if none)")
    sub.add_parser("chat", help="chat in the terminal")
    train = sub.add_parser("train", help="fine-tune on the rated replies now")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    adapters = sub.add_parser("adapters", help="list, activate or roll back adapter versions")
    adapters_sub = adapters.add_subparsers(dest="action", metavar="ACTION")
    adapters_sub.add_parser("list", help="list the versions (default)")
    activate = adapters_sub.add_parser("activate", help="serve version N (0 = base model)")
    activate.add_argument("version")  # parsed strictly by maintenance (bot.commands.args)
    rollback = adapters_sub.add_parser("rollback", help="back to the previous version")
    rollback.add_argument("version", nargs="?")
    export = sub.add_parser("export", help="rated exchanges as JSONL (TRL's KTO format)")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    db_sub.add_parser("upgrade", help="apply pending migrations")
    db_sub.add_parser("current", help="show the schema revision")
    backup = db_sub.add_parser("backup", help="copy the database and the adapters to PATH")
    backup.add_argument("path", type=Path, help="a new (or empty) folder")
    install.add_config_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``selftune`` command line; the return value is the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "config":
        return install.config(args)
    try:
        settings, _path = load_settings(args.config)
    except ConfigError as exc:
        print(f"selftune: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings_secrets(settings), settings.log_format)
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        print("\nselftune: stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        problem = _startup_error(exc)
        if problem is not None:
            print(f"selftune: {problem}", file=sys.stderr)
            return 1
        raise


def _startup_error(exc: BaseException) -> BaseException | None:
    """The StartupError in ``exc``, also inside the ExceptionGroup that serve()'s TaskGroup
    wraps an adapter's error in (a token refused, an intent not enabled)."""
    from bot.errors import StartupError

    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _startup_error(inner)) is not None:
                return found
    return None


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from bot.app import serve
    from bot.cli import maintenance

    command = args.command or "run"
    if command == "run":
        await serve(settings, "run")
        return 0
    if command == "chat":
        await serve(settings, "chat")
        return 0
    handlers: dict[str, Any] = {
        "train": maintenance.train,
        "adapters": maintenance.adapters,
        "export": maintenance.export,
        "db": maintenance.db,
    }
    result: int = await handlers[command](settings, args)
    return result
