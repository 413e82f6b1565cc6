"""Storing a 👍/👎: the one path for rating buttons and for /good and /bad."""

from __future__ import annotations

import bot.metrics as metrics
from bot.types import RateAction, RateOutcome, Vote
from storage.repository import Repository


async def rate(
    repo: Repository, exchange_id: int, user_key: str, vote: Vote, *, chat_key: str | None = None
) -> RateOutcome:
    """Store a vote: one per user per reply; the other button changes it, the same button
    again retracts it. ``chat_key`` (when the platform tells) must match the reply's chat, so a
    forged button from another chat changes nothing."""
    exchange = await repo.exchange(exchange_id)
    if exchange is None or (chat_key is not None and exchange.chat_key != chat_key):
        return RateOutcome(
            RateAction.REFUSED, exchange_id, None, "That reply is unknown here; nothing changed."
        )
    outcome = await repo.rate(exchange_id, user_key, vote)
    if outcome.action is not RateAction.REFUSED:
        metrics.record_rating(int(vote), outcome.action.value)
    return outcome
