"""Logging set-up; secrets (the fields each settings section declares secret: platform tokens,
the model server's api key) are masked in every record before it is written."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings

# Telegram bot tokens look like 123456:AAH...; they also appear inside Bot API URLs.
_TELEGRAM_TOKEN = re.compile(r"(?<!\d)\d{5,}:[A-Za-z0-9_-]{20,}")


def settings_secrets(settings: Settings) -> list[str]:
    """The secrets in ``settings`` that logs must never show: every field a section names in
    its ``secret_fields`` (the platforms' tokens, the OpenAI backend's api key)."""
    return settings.secrets()


class RedactSecrets(logging.Filter):
    """Replaces the given secrets, and anything shaped like a Telegram token, with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _TELEGRAM_TOKEN.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (tests and tools swap it), not the one at start."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``log_format = "json"``), for a log collector: time (UTC,
    ISO 8601), level, logger, message, and the traceback when there is one. The secrets filter
    runs before it, on the message and the traceback alike."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)

    def formatTime(
        self,
        record: logging.LogRecord,
        datefmt: str | None = None,  # noqa: ARG002 - logging.Formatter's signature; fixed format
    ) -> str:
        """UTC in ISO 8601 with milliseconds, whatever ``datefmt`` asks."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def formatter(log_format: str = "text") -> logging.Formatter:
    """The formatter of ``log_format``: ``"text"`` (one readable line) or ``"json"``."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(level: str, secrets: Iterable[str] = (), log_format: str = "text") -> None:
    """Log to stderr (stdout belongs to the console chat), secrets masked, libraries quieter."""
    handler = _StderrHandler()
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in (
        "httpx",
        "httpcore",
        "aiosqlite",
        "asyncio",
        "alembic",
        "discord.gateway",
        "telegram.ext",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
