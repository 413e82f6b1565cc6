"""The subcommands that need no configuration: ``--version`` and ``config example``.

They work the same from a checkout and from an installed wheel (``pip install .``), where
``selftune.example.toml`` is not on disk: the example is made from the settings themselves.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version

DISTRIBUTION = "selftune"


def version() -> str:
    """The installed distribution's version; "unknown" from a tree never installed."""
    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


def add_config_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser] | None = None,
) -> None:
    """Add ``config example [-o FILE]`` to the subcommands ``sub`` (argparse's subparsers)."""
    config = sub.add_parser(
        "config",
        help="the documented example configuration",
        description="The documented example configuration: every key, its default and what "
        "it does.",
        epilog="example:\n  selftune config example -o selftune.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents or [],
    )
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    example = actions.add_parser(
        "example",
        help="print every key with its default and description (selftune.example.toml)",
        description="Print the example configuration, e.g. "
        "`selftune config example -o ~/.config/selftune/config.toml`, then edit it.",
    )
    example.add_argument(
        "-o", "--output", help="file to write (default: stdout); never overwritten"
    )


def config(args: argparse.Namespace) -> int:
    """Run ``selftune config example``: write the example to stdout or to a new file."""
    from bot.settings.docs import example_toml

    text = example_toml()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        # "x": an edited config must never be replaced by the defaults.
        with open(args.output, "x", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        print(f"selftune: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
