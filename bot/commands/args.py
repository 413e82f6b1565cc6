"""Strict parsing of command arguments, in one place: the chat's admin commands (/adapters,
/activate, /rollback, /ab) and the CLI (``selftune adapters activate N``) read version numbers
and shares here. A bad argument is a ``VersionError`` whose message is the answer: the usage, or
"there is no such version"; never an ``int()`` error or a number too large for the database.
"""

from __future__ import annotations

import re

from bot.errors import VersionError
from bot.types import parse_id

BASE_NAMES = ("0", "base")  # what names the base model (no adapter)
_SHOWN_CHARS = 24  # a pasted novel is not echoed back whole
# 0.2, .2, 20, 20%, 12.5% — ASCII digits only (``float`` would also read "٣", "1e-1", "nan").
_SHARE = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,6})?|\.[0-9]{1,6})(%?)", re.ASCII)


def shown(text: str) -> str:
    """A user's argument as quoted back in an answer: cut to a readable length."""
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def version_arg(args: str, usage: str) -> int | None:
    """'3' or 'v3' → 3; '0' or 'base' → None (the base model).

    Anything but ASCII digits is a usage error (``²`` is no version); a number larger than any
    version can be is simply not there."""
    value = args.strip().lower().removeprefix("v")
    if value == "base":
        return None
    number = parse_id(value)
    if number is not None:
        return number or None
    if value.isascii() and value.isdigit():  # digits, but more than any version number
        raise VersionError(f"There is no adapter v{shown(value)}. See /adapters.")
    raise VersionError(f"Usage: {usage} (a version number; 0 is the base model).")


def share_arg(text: str) -> float:
    """'0.2', '.2', '20%' or '20' → 0.2; the A/B test checks the range (0 < share < 1)."""
    match = _SHARE.fullmatch(text.strip())
    if match is None:
        raise VersionError(f"{shown(text)!r} is not a share of chats; try 0.2 or 20%.")
    value = float(match.group(1))
    return value / 100 if value >= 1 or match.group(2) else value
