"""What ``selftune export`` writes, read back: the tests of each signal check it lands there."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bot.cli import maintenance
from bot.settings import Settings


async def exported(settings: Settings, *, pairs: bool) -> list[dict[str, Any]]:
    """The rows of ``selftune export --with-meta`` (``--pairs`` when ``pairs``)."""
    out = settings.data_dir / "exports" / ("pairs.jsonl" if pairs else "ratings.jsonl")
    args = argparse.Namespace(output=Path(out), with_meta=True, pairs=pairs)
    assert await maintenance.export(settings, args) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
