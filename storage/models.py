"""ORM tables. Only storage/ sees these rows; the rest of the code gets bot.types values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit names for every constraint, so Alembic can alter them on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default of every stored timestamp)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The declarative base: the constraint naming convention and the column types of datetimes and
    dicts."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class User(Base):
    """A platform user, with their training opt-out and /forget time."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    platform: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(256), default="")
    training_opt_out: Mapped[bool] = mapped_column(Boolean, default=False)
    forgotten_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Chat(Base):
    """A platform chat, with its persona and current conversation number."""

    __tablename__ = "chats"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(160), unique=True)
    platform: Mapped[str] = mapped_column(String(32))
    persona: Mapped[str | None] = mapped_column(Text)
    conversation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """Every stored turn: user messages (stored before they are answered) and bot replies."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_chat_conversation", "chat_id", "conversation", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    conversation: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    user_name: Mapped[str | None] = mapped_column(String(256))
    platform_message_id: Mapped[str | None] = mapped_column(String(64))
    # "<chat key>/<platform message id>" for messages from a chat platform, whose ids are
    # stable: unique, so a message delivered again (after a crash) is stored once.
    source_key: Mapped[str | None] = mapped_column(String(256), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Exchange(Base):
    """One answered message: the exact prompt context, the reply, and the adapter that wrote it."""

    __tablename__ = "exchanges"

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    request_message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    reply_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    prompt: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    completion: Mapped[str] = mapped_column(Text, default="")
    adapter_version: Mapped[int | None] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(256))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    # Set when /forget scrubbed another user's words out of this prompt: never trained on.
    training_excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Another reply to the same prompt (🔄, or a /better correction) points at the first reply:
    # the alternatives of one prompt share it, and votes among them make preference pairs.
    regenerated_from: Mapped[int | None] = mapped_column(
        ForeignKey("exchanges.id", ondelete="CASCADE"), index=True
    )
    # "model": written by the model; "correction": the reply a user wrote with /better.
    source: Mapped[str] = mapped_column(String(16), default="model", server_default="model")
    # The user who wrote a correction (its prompt stays the author's: user_id).
    corrected_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Rating(Base):
    """One vote per user per exchange; changed or retracted in place."""

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("exchange_id", "user_id"),
        CheckConstraint("value IN (-1, 1)", name="value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(ForeignKey("exchanges.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    value: Mapped[int] = mapped_column(SmallInteger)
    # How the vote was given: "button" (👍/👎, /good, /bad), "reaction", "correction".
    source: Mapped[str] = mapped_column(String(16), default="button", server_default="button")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterVersionRow(Base):
    """A trained LoRA version: where it is, its parent, status, training data and metrics."""

    __tablename__ = "adapter_versions"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    path: Mapped[str] = mapped_column(String(1024))
    parent: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.version"))
    status: Mapped[str] = mapped_column(String(16))
    base_model: Mapped[str] = mapped_column(String(256))
    exchange_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    duration_s: Mapped[float | None] = mapped_column(Float)
    tainted: Mapped[bool] = mapped_column(Boolean, default=False)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def one_running(table: str) -> Index:
    """A partial unique index: at most one row of ``table`` is ``running``, across processes
    (a ``SELECT … FOR UPDATE`` locks nothing when no row matches, and SQLite ignores it)."""
    running = text("status = 'running'")
    return Index(
        f"uq_{table}_one_running",
        "status",
        unique=True,
        sqlite_where=running,
        postgresql_where=running,
    )


class TrainingRunRow(Base):
    """A training run: its trigger, trainer process, outcome and the version it made."""

    __tablename__ = "training_runs"
    __table_args__ = (one_running("training_runs"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str | None] = mapped_column(String(128))
    pid: Mapped[int | None] = mapped_column(Integer)
    adapter_version: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, default="")
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # The trainer queue (``training.runner = "queue"``): who holds the run and since when it
    # last said so, how often it was taken, where the requester hears the result, whether a
    # serving process told them, and the adapter folder being written (removed if abandoned).
    host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    notify_to: Mapped[str | None] = mapped_column(String(300))
    announced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    output: Mapped[str | None] = mapped_column(Text)


class ABTestRow(Base):
    """A candidate adapter served to a share of chats next to the live one (the control)."""

    __tablename__ = "ab_tests"
    __table_args__ = (one_running("ab_tests"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate: Mapped[int] = mapped_column(ForeignKey("adapter_versions.version"))
    control: Mapped[int | None] = mapped_column(Integer)  # None: the base model
    share: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_by: Mapped[str | None] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]


class AuditEntry(Base):
    """Who did what from the operator's side (dashboard, admin commands), and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # a user key, or "web:password"
    action: Mapped[str] = mapped_column(String(32), index=True)  # e.g. "rating.flip", "user.block"
    target: Mapped[str] = mapped_column(String(200))  # e.g. "rating:12", "user:telegram:42"
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class UserControl(Base):
    """An operator's decisions about one user: blocked, or their ratings kept out of training.

    Keyed by the user key, not the users row: a key can be blocked before it ever writes, and
    the decision outlives a /forget (which deletes the users row)."""

    __tablename__ = "user_controls"

    user_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ratings_excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsedLoginNonce(Base):
    """A one-time login link that was used: the primary key refuses a second use."""

    __tablename__ = "web_login_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_key: Mapped[str] = mapped_column(String(128))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)  # rows past it can be deleted


class Delivery(Base):
    """One update from a platform, stored before the platform is told it arrived and marked
    done once handled: what a crash interrupted is handled again at the next start.

    ``platform`` names the bot account (``telegram:<bot id>``), ``key`` the update (Telegram's
    update_id, Discord's message id); the primary key drops an update delivered twice."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_pending", "platform", "done"),
        Index("ix_deliveries_chat_pending", "platform", "chat_key", "done"),
    )

    platform: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The platform's id of the reply's first message, once sent: answered again, it is edited.
    reply_ref: Mapped[str | None] = mapped_column(String(64))
    done: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The chat the update belongs to (None: no chat, e.g. a button press handled at once): a
    # chat's updates are handled one at a time, in key order, by whichever process holds the
    # chat's turn (storage.coordination), so several serving processes keep a chat's order.
    chat_key: Mapped[str | None] = mapped_column(String(128))


class RateEvent(Base):
    """One message a user was let send (PostgreSQL's per-user limit, counted across serving
    processes: ``storage.coordination.StoredRateLimits``); rows older than the window go."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_user_at", "user_key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)
