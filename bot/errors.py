"""The errors that cross layers, in one hierarchy (stdlib only).

Catch the narrowest class that fits. A :class:`UserError`'s message is written for the person
who caused it and is safe to show in a chat; every other message is for the operator's log or
terminal (it may name paths), and chats see a short apology instead.

::

    SelftuneError
    ├── StartupError          the bot cannot start: the message says what to fix
    │   └── ConfigError       a configuration value, named with where it came from
    ├── ModelLoadError        the model cannot be loaded
    │   └── LoraError         a LoRA folder is missing, broken or does not fit
    ├── GenerationError       a reply could not be written (the engine or the server failed)
    ├── TrainingError         the trainer child process cannot train (its ``error`` event)
    ├── TrainingFailed        the trainer ended without an adapter (seen by the parent)
    └── UserError             a request that cannot be done; the message is for the user
        ├── VersionError      an activation or rollback that cannot be done
        ├── NothingToTrain    too few usable ratings
        ├── TrainingAlreadyRunning
        ├── ABTestRunning
        └── PromptTooLong     even the newest message alone does not fit the context
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.types import TrainingRun


class SelftuneError(Exception):
    """Base of every error selftune raises on purpose."""


class StartupError(SelftuneError):
    """The bot cannot start; the message says what to fix."""


class ConfigError(StartupError, ValueError):
    """A configuration problem; the message names the key and where its value came from."""


class ModelLoadError(SelftuneError):
    """The model (or an adapter) cannot be loaded; the message says why and what to do."""


class LoraError(ModelLoadError):
    """A LoRA adapter directory is missing, broken or does not fit the serving model."""


class GenerationError(SelftuneError):
    """Generation failed; the message is safe to show to the user."""


class TrainingError(SelftuneError):
    """Training cannot run; the message says why (it becomes the trainer's ``error`` event)."""


class TrainingFailed(SelftuneError):
    """The trainer ended without an adapter; the message says why."""


class UserError(SelftuneError):
    """A request that cannot be done; the message is written for the user who asked."""


class VersionError(UserError):
    """An activation or rollback that cannot be done; the message says why."""


class NothingToTrain(UserError):
    """Too few usable ratings; the message says how many there are and how many are needed."""


class TrainingAlreadyRunning(UserError):
    """Another training run holds the lock (in this process or another one)."""

    def __init__(self, run: TrainingRun) -> None:
        super().__init__(f"training run {run.id} is already running since {run.started_at:%H:%M}")
        self.run = run


class ABTestRunning(UserError):
    """An A/B test is already running; finish it first."""


class PromptTooLong(UserError):
    """Even the newest message alone does not fit the context window."""

    def __init__(self, tokens: int, budget: int) -> None:
        super().__init__(f"{tokens} tokens, the limit is {budget}")
        self.tokens = tokens
        self.budget = budget
