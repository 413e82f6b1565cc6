"""Settings: one TOML file plus the environment, validated with pydantic.

- ``load.py``: ``Settings`` (the root), ``load_settings`` (file → environment overrides →
  validation), the only reader of ``os.environ`` with ``base.py``
- ``base.py``: the ``Section`` base class and the XDG directories
- ``serving.py``: database, model, backend, generation and chat sections
- ``learning.py``: lora, training, gate, A/B and schedule sections
- ``docs.py``: ``python -m bot.settings.docs`` regenerates ``selftune.example.toml`` and the
  README's configuration table from the sections
"""

from bot.errors import ConfigError
from bot.settings.load import (
    DEFAULT_MODEL,
    ENV_PREFIX,
    ABSettings,
    BackendSettings,
    ChatSettings,
    DatabaseSettings,
    DiscordSettings,
    GateSettings,
    GenerationSettings,
    LoraSettings,
    ModelSettings,
    ScheduleSettings,
    Settings,
    TelegramSettings,
    TrainingSettings,
    load_settings,
)

__all__ = [
    "DEFAULT_MODEL",
    "ENV_PREFIX",
    "ABSettings",
    "BackendSettings",
    "ChatSettings",
    "ConfigError",
    "DatabaseSettings",
    "DiscordSettings",
    "GateSettings",
    "GenerationSettings",
    "LoraSettings",
    "ModelSettings",
    "ScheduleSettings",
    "Settings",
    "TelegramSettings",
    "TrainingSettings",
    "load_settings",
]
