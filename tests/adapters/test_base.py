"""Shared adapter pieces: rating tokens, splitting; and secret masking in logs."""

from __future__ import annotations

import logging

import pytest

from adapters.base import encode_rating, parse_rating, split_text, utf16_len
from bot.logs import RedactSecrets
from bot.types import Vote


def test_rating_tokens_round_trip_and_reject_forgeries() -> None:
    token = encode_rating(123456789, Vote.DOWN)
    assert token == "rate:123456789:-1" and len(token.encode()) <= 64
    assert parse_rating(token) == (123456789, Vote.DOWN)
    assert parse_rating(encode_rating(5, Vote.UP)) == (5, Vote.UP)
    assert parse_rating("rate:2147483647:1") == (2147483647, Vote.UP)
    for forged in (
        "",
        None,
        "rate:1:2",
        "rate:x:1",
        "rate:1:1:1",
        "vote:1:1",
        "rate:-1:1",
        "rate:1:+1",
        "rate:" + "9" * 30 + ":1",
        " rate:1:1",
        "rate:1:1\n",
        "rate:٣:1",  # an Arabic-Indic 3: int() would read it
        "rate:2147483648:1",  # beyond any id the database holds
        "rate:\ud83d:1",
    ):
        assert parse_rating(forged) is None, forged


def _rejoin(pieces: list[str]) -> str:
    return " ".join(" ".join(p.split()) for p in pieces)


@pytest.mark.parametrize(
    "text",
    [
        "short",
        "para one.\n\npara two is here.\n\npara three " + "x" * 50,
        "Sentence one. Sentence two! Sentence three? " * 20,
        "word " * 300,
        "y" * 250,  # one word longer than the limit: hard cuts, nothing lost
        "",
    ],
)
def test_split_never_loses_text_and_respects_the_limit(text: str) -> None:
    pieces = split_text(text, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert _rejoin(pieces) == " ".join(text.split()) or "".join(pieces) == text


def test_split_prefers_paragraphs_then_sentences() -> None:
    text = "A" * 60 + "\n\n" + "B" * 60
    assert split_text(text, 100) == ["A" * 60, "B" * 60]
    text = "First sentence here. " + "Second one is longer than the rest of it. " * 2
    pieces = split_text(text, 60)
    assert pieces[0].endswith(".")


def test_split_by_utf16_length_for_telegram() -> None:
    text = "😀" * 3000  # 2 UTF-16 units each
    pieces = split_text(text, 4096, utf16_len)
    assert all(utf16_len(p) <= 4096 for p in pieces)
    assert "".join(pieces) == text and len(pieces) == 2


def test_tokens_are_masked_in_log_records(caplog: pytest.LogCaptureFixture) -> None:
    token = "123456789:AAHfake-token_value_ABCDEFGHIJK"
    discord_token = "discord.secret.token.value"
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactSecrets([discord_token]))
    with caplog.at_level(logging.INFO):
        logger.info("POST https://api.telegram.org/bot%s/getUpdates", token)
        logger.info("login with %s", discord_token)
        try:
            raise RuntimeError(f"failed for {discord_token}")
        except RuntimeError:
            logger.exception("boom")
    text = caplog.text
    assert token not in text and discord_token not in text
    assert "bot***/getUpdates" in text and "login with ***" in text
