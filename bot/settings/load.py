"""Settings: one TOML file plus environment overrides. With ``base.py`` (the XDG directories),
the only reader of ``os.environ``.

Every key can be overridden by ``SELFTUNE_`` + the dotted key in upper case with ``.`` written
``__``: ``database.url`` → ``SELFTUNE_DATABASE__URL``; lists and tables are given as JSON
(``SELFTUNE_ADMINS='["telegram:42"]'``). A platform's token also comes from the variable its
section declares (``TELEGRAM_BOT_TOKEN``, ``DISCORD_BOT_TOKEN``: ``platforms.py``).
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from bot.errors import ConfigError
from bot.settings.access import AccessSettings
from bot.settings.base import Section, xdg
from bot.settings.instance import ServingSettings
from bot.settings.learning import (
    ABSettings,
    GateSettings,
    LoraSettings,
    ScheduleSettings,
    TrainingSettings,
)
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
from bot.settings.storage import AWS_ENV, StorageSettings
from bot.settings.web import WebSettings

__all__ = ["CONFIG_ENV", "ENV_PREFIX", "Settings", "default_config_path", "load_settings"]

ENV_PREFIX = "SELFTUNE_"
CONFIG_ENV = "SELFTUNE_CONFIG"


class Settings(Section):
    """The whole configuration: plain keys, then one section per TOML table."""

    data_dir: Path = Field(
        default_factory=lambda: xdg("XDG_DATA_HOME", ".local/share") / "selftune",
        description="Database, adapters and training data.",
    )
    admins: list[str] = Field(
        default_factory=lambda: ["console:local"],
        description="User keys allowed to run admin commands, e.g. 'telegram:42'.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="Logging threshold of <data_dir>/logs/selftune.log (stderr: warnings, "
        "or everything with --verbose; tokens masked).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object per log line (for a log collector)."
    )
    # Sections are frozen, so one default instance can be shared safely.
    database: DatabaseSettings = DatabaseSettings()
    model: ModelSettings = ModelSettings()
    backend: BackendSettings = BackendSettings()
    generation: GenerationSettings = GenerationSettings()
    chat: ChatSettings = ChatSettings()
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()
    gate: GateSettings = GateSettings()
    ab: ABSettings = ABSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    telegram: TelegramSettings = TelegramSettings()
    discord: DiscordSettings = DiscordSettings()
    web: WebSettings = WebSettings()
    storage: StorageSettings = StorageSettings()
    access: AccessSettings = AccessSettings()
    serving: ServingSettings = ServingSettings()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("admins")
    @classmethod
    def _admin_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            platform, _, ident = key.partition(":")
            if not platform or not ident:
                raise ValueError(f"{key!r} is not a user key like 'telegram:42'")
        return value

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'selftune.db'}"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    def platform(self, platform: Platform) -> PlatformSection:
        """The section of ``platform`` (the attribute its table entry names)."""
        section = getattr(self, platform.name)
        if not isinstance(section, platform.section):
            raise TypeError(f"Settings.{platform.name} is not a {platform.section.__name__}")
        return section

    def secrets(self) -> list[str]:
        """Every secret set anywhere in the configuration (the log filter masks them): the
        fields each section declares in ``secret_fields``."""
        found = super().secrets()
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Section):
                found.extend(value.secrets())
        return found

    def is_admin(self, user_key: str) -> bool:
        """Whether ``user_key`` may run admin commands."""
        return user_key in self.admins


def default_config_path(cwd: Path | None = None) -> Path | None:
    """``./selftune.toml`` if present, else ``$XDG_CONFIG_HOME/selftune/config.toml`` if present."""
    for candidate in (
        (cwd or Path.cwd()) / "selftune.toml",
        xdg("XDG_CONFIG_HOME", ".config") / "selftune" / "config.toml",
    ):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Path | None]:
    """Read the TOML file (``path``, ``$SELFTUNE_CONFIG`` or the default) and the environment.

    Returns the settings and the file they came from. Raises ConfigError naming the key.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    elif path is None:
        path = default_config_path()
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    sources = dict.fromkeys(_flatten(data), f"{path}")
    for key, value, origin in _env_overrides(env):
        _set_dotted(data, key, value)
        sources[key] = origin
    for key, value, origin in _aws_defaults(env, sources):
        _set_dotted(data, key, value)
        sources[key] = origin
    try:
        return Settings.model_validate(data), path
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    found: list[tuple[str, Any, str]] = []
    for platform in PLATFORMS:
        var = platform.section.token_env
        if env.get(var):
            found.append((f"{platform.name}.token", env[var], var))
    for var, raw in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        key = var[len(ENV_PREFIX) :].lower().replace("__", ".")
        annotation = _field_annotation(key)
        if annotation is None:
            raise ConfigError(f"{var}: there is no setting {key!r}")
        found.append((key, _parse_env_value(var, raw, annotation), var))
    return found


def _aws_defaults(env: Mapping[str, str], given: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """The standard AWS variables for the ``[storage]`` keys the file and SELFTUNE_* left unset
    (the first variable set wins, as in the AWS tools)."""
    found: list[tuple[str, str, str]] = []
    for name, variables in AWS_ENV.items():
        key = f"storage.{name}"
        var = next((v for v in variables if env.get(v)), None)
        if key not in given and var is not None:
            found.append((key, env[var], var))
    return found


def _field_annotation(key: str) -> Any | None:
    model: type[BaseModel] = Settings
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if i == len(parts) - 1:
            return annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None


def _parse_env_value(var: str, raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, dict) or annotation in (list, dict):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{var}: expected a JSON value ({exc.msg})") from None
    return raw


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part!r} is a table of settings, not a value")
        node = child
    node[leaf] = value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.extend(_flatten(value, dotted + ".") if isinstance(value, dict) else [dotted])
    return keys


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        source = sources.get(key) or next(
            (v for k, v in sources.items() if k.startswith(key + ".") or key.startswith(k + ".")),
            "defaults",
        )
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"setting {key!r} (from {source}): {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
