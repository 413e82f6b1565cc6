"""``log_format = "json"``: one JSON object per line, secrets masked as in text logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from bot.logs import setup_logging
from bot.settings import load_settings

SECRET = "s3cr3t-t0ken-value"


@pytest.fixture
def restored() -> Iterator[None]:
    """setup_logging replaces the root's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_the_setting() -> None:
    loaded, _ = load_settings(None, {"SELFTUNE_LOG_FORMAT": "json"})
    assert loaded.log_format == "json"
    assert load_settings(None, {})[0].log_format == "text"


def test_json_lines_with_secrets_masked(restored: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", [SECRET], log_format="json")
    log = logging.getLogger("bot.test")
    log.info("connecting with %s to 123456:%s", SECRET, "A" * 30)
    try:
        raise ValueError(f"refused {SECRET}")
    except ValueError:
        log.exception("it failed: «%s»", 'quoted "text"\nand a newline')
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # the traceback and the newline stay inside their line
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "bot.test"
    assert first["message"] == "connecting with *** to ***"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == 'it failed: «quoted "text"\nand a newline»'
    assert "ValueError: refused ***" in second["exception"]
    assert SECRET not in "\n".join(lines)
