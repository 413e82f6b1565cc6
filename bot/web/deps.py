"""What the dashboard needs from the running bot, as protocols: the core passes its own
objects (``AdapterVersions``, ``ABTesting``, ``Finetuner``), tests pass small fakes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bot.learning.protocol import Event
from bot.settings import Settings
from bot.types import AdapterVersion
from storage.repository import Repository


class VersionControl(Protocol):
    """Which adapter serves (``bot.learning.versions.AdapterVersions``)."""

    current: int | None

    async def activate(self, version: int | None) -> AdapterVersion | None:
        """Serve ``version`` (None: the base model)."""
        ...

    async def rollback(self, version: int | None = None) -> int | None:
        """Back to ``version`` or to the serving one's parent; returns what serves now."""
        ...


class ABControl(Protocol):
    """A/B tests (``bot.learning.ab.ABTesting``)."""

    async def start(self, version: int, share: float | None, started_by: str | None) -> str:
        """Serve ``version`` to ``share`` of the chats."""
        ...

    async def status(self) -> str | None:
        """The running test's comparison, or None."""
        ...

    async def promote(self) -> str:
        """The candidate goes live for every chat."""
        ...

    async def retire(self) -> str:
        """The candidate is taken out of use."""
        ...


class TrainingProgress(Protocol):
    """The finetuner's live state (``bot.learning.finetune.Finetuner``)."""

    progress: Event | None  # the trainer's last event

    @property
    def running(self) -> bool:
        """True while this process trains."""
        ...


@dataclass(frozen=True)
class GeneratorSnapshot:
    """The generator now: what it is and how busy (from ``EngineStats`` where there is one)."""

    model_name: str
    loaded: bool = True
    tokens: int = 0  # tokens generated since start (a counter: the sampler makes a rate of it)
    running: int = 0  # sequences in the batch
    queued: int = 0  # requests waiting


@dataclass
class WebDeps:
    """Everything the pages read or change; built once in ``serve()``."""

    repo: Repository
    settings: Settings
    versions: VersionControl
    ab: ABControl
    training: TrainingProgress
    generator: Callable[[], GeneratorSnapshot]
    adapters: Callable[[], Mapping[str, bool]] = dict  # platform -> connected
    data_dir: Path | None = None  # where a generated secret key is kept (default: settings')
    extra: dict[str, Any] = field(default_factory=dict)  # room for later pages
