"""Logging set-up; secrets (the fields each settings section declares secret: platform tokens,
the model server's api key) are masked in every record before it is written.

The log goes to a file in the data dir (``<data_dir>/logs/selftune.log``, rotated); standard
error shows only warnings and errors, or everything with ``--verbose``. Standard output belongs
to the console chat, so no log line ever lands between a command and its answer.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings

LOG_FILE = Path("logs") / "selftune.log"  # inside the data dir
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MAX_BYTES = 5_000_000  # per file; with the backups, at most ~20 MB of logs
_BACKUPS = 3
_NOISY = ("httpx", "httpcore", "aiosqlite", "asyncio", "alembic", "discord.gateway", "telegram.ext")

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
    return logging.Formatter(_FORMAT)


def log_file(data_dir: Path) -> Path:
    """Where the log of the data dir ``data_dir`` is written."""
    return data_dir.expanduser() / LOG_FILE


def setup_logging(
    level: str,
    secrets: Iterable[str] = (),
    *,
    data_dir: Path | None = None,
    verbose: bool = False,
    log_format: str = "text",
) -> Path | None:
    """Log at ``level`` to ``<data_dir>/logs/selftune.log`` and, at WARNING (``verbose``:
    at ``level`` too), to stderr; secrets masked, libraries quieter. Returns the file, or None
    when there is no data dir or it cannot be written (then stderr gets ``level``).
    ``log_format``: ``"text"`` or ``"json"`` (one object per line), on every handler."""
    redact = RedactSecrets(secrets)
    shape = formatter(log_format)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_selftune", False)]:
        root.removeHandler(old)
        old.close()  # an old file handler holds its file open
    path = _file_handler(root, level, redact, shape, data_dir)
    stderr_level = level if verbose or path is None else _at_least(level, logging.WARNING)
    _add(root, _StderrHandler(), stderr_level, redact, shape)
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(_at_least(level, logging.WARNING))
    return path


def _file_handler(
    root: logging.Logger,
    level: str,
    redact: RedactSecrets,
    shape: logging.Formatter,
    data_dir: Path | None,
) -> Path | None:
    if data_dir is None:
        return None
    path = log_file(data_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8", delay=True
        )
        with path.open("a", encoding="utf-8"):
            pass  # fail now, not at the first record, if the file cannot be written
    except OSError:
        return None  # start-up explains an unusable data dir; log to stderr meanwhile
    _add(root, handler, level, redact, shape)
    return path


def _add(
    root: logging.Logger,
    handler: logging.Handler,
    level: str | int,
    redact: RedactSecrets,
    shape: logging.Formatter,
) -> None:
    handler.setFormatter(shape)
    handler.addFilter(redact)
    handler.setLevel(level)
    handler._selftune = True  # type: ignore[attr-defined]  # ours to replace on the next set-up
    root.addHandler(handler)


def _at_least(level: str, floor: int) -> int:
    """``level`` (a name), but never below ``floor``."""
    named: int = logging.getLevelName(level)
    return max(floor, named)
