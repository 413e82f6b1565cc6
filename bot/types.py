"""Plain values the core speaks; standard library only. Adapters, storage, the model share them."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Role = Literal["system", "user", "assistant"]

# -- what a platform sends: cleaned here, once, for every adapter -----------------------------

MAX_ID = 2**31 - 1
"""The largest id or version number taken from a user: what an INTEGER column holds on every
database (PostgreSQL's is 32-bit; a larger number would not even reach the query)."""
MAX_NAME_CHARS = 100

# Characters a stored or shown text must not carry: C0/C1 controls (newline and tab are kept),
# lone surrogates (half an emoji from a broken client: no UTF-8 encoder takes them), and the
# explicit bidi embeddings, overrides and isolates, which reorder the text around them so a
# name or message can disguise what it says. The bidi marks (LRM, RLM) and the zero-width
# joiners (emoji sequences, Persian) are ordinary text and stay.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NEWLINES = re.compile(r"\r\n?")


def _replace_unsafe(match: re.Match[str]) -> str:
    return "\ufffd" if "\ud800" <= match.group() <= "\udfff" else ""


def clean_text(text: str) -> str:
    """A text from a platform as the core stores, prompts and shows it; never raises.

    Lone surrogates become U+FFFD (the reader sees something was there); other control and bidi
    control characters are dropped; ``\\r\\n`` and ``\\r`` become ``\\n``; surrounding
    whitespace is trimmed. Length is not limited here: an over-long message is stored whole and
    answered with "too long" (``bot.chat.service``)."""
    return _UNSAFE.sub(_replace_unsafe, _NEWLINES.sub("\n", text)).strip()


def clean_name(name: str) -> str:
    """A sender's display name: cleaned like a text, on one line (in a group's prompt a line
    break in a name could pose as a new turn), at most ``MAX_NAME_CHARS`` characters."""
    return " ".join(clean_text(name).split())[:MAX_NAME_CHARS].strip()


def parse_id(text: str) -> int | None:
    """A version or id typed by a user: ASCII digits only, at most ``MAX_ID``; else None.

    Strict on purpose: ``str.isdigit`` also accepts ``²`` (which ``int`` then refuses) and
    ``int`` reads ``٣`` and ``1_0``; a number longer than any id is not converted at all."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_ID)):
        return None
    value = int(digits)
    return value if value <= MAX_ID else None


@dataclass(frozen=True)
class Incoming:
    """One message from a user, normalised by an adapter.

    ``chat_id`` names the conversation on its platform; ``thread_id`` (a forum topic, a Discord
    thread) splits it further, so each thread is its own conversation.
    """

    platform: str
    chat_id: str
    user_id: str
    user_name: str
    text: str
    message_id: str | None = None
    is_private: bool = True
    mentions_bot: bool = False
    reply_to_bot: bool = False
    thread_id: str | None = None
    is_admin: bool = False  # the platform vouches for it (e.g. a Discord admin role)
    # The platform's id of the bot message this one answers (None: not a reply to the bot).
    reply_to_id: str | None = None

    def __post_init__(self) -> None:
        # The one validation path of what a platform sends: every adapter builds an Incoming,
        # so none can forget to clean a text or a name (the fields are frozen, hence setattr).
        object.__setattr__(self, "text", clean_text(self.text))
        object.__setattr__(self, "user_name", clean_name(self.user_name))

    @property
    def chat_key(self) -> str:
        """Key of the conversation, e.g. ``telegram:-100123``, or ``discord:5:77`` in a thread."""
        base = f"{self.platform}:{self.chat_id}"
        return f"{base}:{self.thread_id}" if self.thread_id else base

    @property
    def user_key(self) -> str:
        """Stable key of the user, e.g. ``discord:42``; admins are configured as user keys."""
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True)
class Turn:
    """One message of a prompt, as the chat template sees it."""

    role: Role
    content: str


def messages(turns: Iterable[Turn]) -> list[dict[str, str]]:
    """Turns as chat-template / OpenAI / TRL messages: ``{"role": …, "content": …}``."""
    return [{"role": t.role, "content": t.content} for t in turns]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one request; ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Draft:
    """The reply so far, while it is being generated (adapters show it by editing a message)."""

    text: str


class ReplyKind(enum.StrEnum):
    """What a reply is, which decides how adapters show it and whether it can be rated."""

    ANSWER = "answer"  # a model reply: rateable
    COMMAND = "command"  # the answer to a /command
    ERROR = "error"  # something went wrong; the text says what
    NOTICE = "notice"  # a short note (empty input, rate limit, ...)


@dataclass(frozen=True)
class Reply:
    """The final reply. ``exchange_id`` is set for model answers, which carry 👍/👎."""

    text: str
    kind: ReplyKind = ReplyKind.ANSWER
    exchange_id: int | None = None
    adapter_version: int | None = None
    image_png: bytes | None = None
    private: bool = False  # admin output: ephemeral where the platform can do it

    @property
    def rateable(self) -> bool:
        return self.kind is ReplyKind.ANSWER and self.exchange_id is not None


class Vote(enum.IntEnum):
    """A user's rating of a reply, stored as -1 or 1."""

    DOWN = -1
    UP = 1


class RateAction(enum.StrEnum):
    """What a 👍/👎 press did to the stored vote."""

    STORED = "stored"
    CHANGED = "changed"
    RETRACTED = "retracted"
    REFUSED = "refused"


@dataclass(frozen=True)
class RateOutcome:
    """What a 👍/👎 press did; ``current`` is the user's vote now (None: retracted or refused)."""

    action: RateAction
    exchange_id: int
    current: Vote | None
    message: str
    ups: int = 0
    downs: int = 0


@dataclass(frozen=True)
class Exchange:
    """One answered user message: the exact prompt that produced the reply, and who answered."""

    id: int
    chat_key: str
    user_key: str
    prompt: tuple[Turn, ...]
    completion: str
    adapter_version: int | None
    created_at: datetime


@dataclass(frozen=True)
class RatedExchange:
    """One rated exchange as a training row (TRL's KTO shape: prompt, completion, label)."""

    exchange_id: int
    user_key: str
    prompt: tuple[Turn, ...]
    completion: str
    label: bool
    adapter_version: int | None
    rated_at: datetime


class AdapterStatus(enum.StrEnum):
    """The life-cycle state of a trained LoRA version."""

    READY = "ready"  # trained and usable; not serving
    ACTIVE = "active"  # serving now
    REJECTED = "rejected"  # failed the evaluation gate
    RETIRED = "retired"  # taken out of use by an admin


@dataclass(frozen=True)
class AdapterVersion:
    """A trained LoRA adapter. Version ``None`` everywhere means the base model (zero adapter)."""

    version: int
    path: str
    parent: int | None
    created_at: datetime
    status: AdapterStatus
    exchange_ids: tuple[int, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    hyperparams: Mapping[str, object] = field(default_factory=dict)
    duration_s: float | None = None
    tainted: bool = False  # trained on data a user later asked to /forget

    @property
    def active(self) -> bool:
        return self.status is AdapterStatus.ACTIVE


class RunStatus(enum.StrEnum):
    """The state of a training run: queued (for a trainer worker), running, or how it ended."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TrainingRun:
    """A training run as recorded: who or what started it, when, how it ended, what it made."""

    id: int
    status: RunStatus
    trigger: str
    requested_by: str | None
    started_at: datetime
    finished_at: datetime | None
    adapter_version: int | None
    message: str
    host: str | None = None  # the trainer worker's machine (queued runs), once one took it
    attempts: int = 0  # how often a worker took it


@dataclass(frozen=True)
class ChatInfo:
    """A chat's persona and the number of its current conversation."""

    key: str
    persona: str | None
    conversation: int  # increases with /new; history is the messages of the current one


@dataclass(frozen=True)
class HistoryMessage:
    """A stored message of the current conversation, oldest first."""

    role: Role
    content: str
    user_name: str | None
    created_at: datetime
