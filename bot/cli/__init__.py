"""The ``selftune`` command: the parser and its dispatch (entry point ``bot.cli:main``).

- ``__init__``: configuration loading, logging, the subcommands that serve (run, chat)
- ``parser.py``: the arguments, every subcommand's help with an example
- ``maintenance.py``: the subcommands that do not serve (train, adapters, export, db)
- ``trainer.py``: ``selftune trainer``, the worker that trains queued runs
- ``install.py``: what needs no configuration: ``--version``, ``config example``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from bot.cli import install
from bot.cli.parser import build_parser
from bot.errors import ConfigError
from bot.logs import settings_secrets, setup_logging
from bot.settings import Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``selftune`` command line; the return value is the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return install.config(args)
    try:
        settings, _path = load_settings(args.config)
    except ConfigError as exc:
        print(f"selftune: {exc}", file=sys.stderr)
        return 2
    setup_logging(
        settings.log_level,
        settings_secrets(settings),
        data_dir=settings.data_dir,
        verbose=bool(args.verbose),
        log_format=settings.log_format,
    )
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
    from bot.cli.trainer import trainer

    command = args.command or "run"
    if command == "run":
        await serve(settings, "run")
        return 0
    if command == "chat":
        await serve(settings, "chat")
        return 0
    handlers: dict[str, Any] = {
        "train": maintenance.train,
        "trainer": trainer,
        "adapters": maintenance.adapters,
        "export": maintenance.export,
        "db": maintenance.db,
    }
    result: int = await handlers[command](settings, args)
    return result
