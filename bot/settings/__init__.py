"""Settings: one TOML file plus the environment, validated with pydantic.

- ``load.py``: ``Settings`` (the root), ``load_settings`` (file → environment overrides →
  validation), the only reader of ``os.environ`` with ``base.py``
- ``base.py``: the ``Section`` base class (frozen, unknown keys refused, its secret fields
  named) and the XDG directories
- ``serving.py``: database, model, backend, generation and chat sections
- ``platforms.py``: one section per chat platform (its token variable and secrets) and the
  ``PLATFORMS`` table the composition root builds adapters from
- ``learning.py``: lora, training, gate, A/B and schedule sections
- ``storage.py``: where adapters are published (a directory or an S3 bucket)
- ``instance.py``: the ``[serving]`` roles of a process when several share one database
- ``access.py``: who the bot answers (allow and block lists, private chats)
- ``docs.py``: ``python -m bot.settings.docs`` regenerates ``selftune.example.toml`` and the
  README's configuration table from the sections

Code outside this package imports from ``bot.settings``, not from its modules.
"""

from bot.errors import ConfigError
from bot.settings.access import AccessSettings
from bot.settings.base import DEFAULT_MODEL, Section
from bot.settings.instance import ServingSettings, is_exclusive
from bot.settings.learning import (
    ABSettings,
    GateSettings,
    LoraSettings,
    ScheduleSettings,
    TrainingSettings,
)
from bot.settings.load import ENV_PREFIX, Settings, load_settings
from bot.settings.platforms import (
    PLATFORMS,
    DiscordSettings,
    Platform,
    PlatformSection,
    TelegramSettings,
)
from bot.settings.serving import (
    BackendSettings,
    ChatSettings,
    DatabaseSettings,
    GenerationSettings,
    ModelSettings,
)
from bot.settings.storage import StorageSettings

__all__ = [
    "DEFAULT_MODEL",
    "ENV_PREFIX",
    "PLATFORMS",
    "ABSettings",
    "AccessSettings",
    "BackendSettings",
    "ChatSettings",
    "ConfigError",
    "DatabaseSettings",
    "DiscordSettings",
    "GateSettings",
    "GenerationSettings",
    "LoraSettings",
    "ModelSettings",
    "Platform",
    "PlatformSection",
    "ScheduleSettings",
    "Section",
    "ServingSettings",
    "Settings",
    "StorageSettings",
    "TelegramSettings",
    "TrainingSettings",
    "is_exclusive",
    "load_settings",
]
