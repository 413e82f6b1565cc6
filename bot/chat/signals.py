"""Signals besides the 👍/👎 buttons: reactions that count as votes, and /better corrections.

🔄 regeneration is part of answering (``bot.chat.service.ChatService.regenerate``); the pairs
these signals make are read for training by ``storage.training_rows`` (rules: ``storage.pairs``).
"""

from __future__ import annotations

from collections.abc import Iterable

import bot.metrics as metrics
from bot.settings import ChatSettings
from bot.types import Incoming, RateAction, RateOutcome, Vote
from storage.repository import Repository

REACTION = "reaction"  # Rating.source of a vote given by a reaction
CONSOLE = "console"

THANKS = "Thanks — I'll learn from that: your reply is stored as the better answer to that message."
NOT_A_REPLY = (
    "Use /better as a reply to one of my messages: /better <the reply you wanted>. "
    "Nothing was stored."
)
EMPTY = "Write the reply you wanted after /better, e.g. /better Paris is the capital of France."
OPTED_OUT = "You opted out of training (/optin undoes it): nothing was stored."


def _plain(emoji: str) -> str:
    """An emoji without its variation selector ("❤️" and "❤" are one reaction)."""
    return emoji.replace("\ufe0f", "").strip()


def reaction_vote(chat: ChatSettings, emojis: Iterable[str]) -> Vote | None:
    """The vote a set of reactions stands for: the last one that counts, or None."""
    liked = {_plain(e) for e in chat.liked_reactions}
    disliked = {_plain(e) for e in chat.disliked_reactions}
    vote = None
    for emoji in emojis:
        plain = _plain(emoji)
        if plain in liked:
            vote = Vote.UP
        elif plain in disliked:
            vote = Vote.DOWN
    return vote


async def react(
    repo: Repository,
    chat: ChatSettings,
    exchange_id: int,
    user_key: str,
    added: Iterable[str],
    removed: Iterable[str],
) -> RateOutcome | None:
    """A user's reactions on a reply changed: a reaction that counts replaces the user's vote;
    removing one withdraws the vote it gave (not a different vote given since). None: no
    reaction that counts changed."""
    vote, gone = reaction_vote(chat, added), reaction_vote(chat, removed)
    if vote is None and (gone is None or await repo.user_vote(exchange_id, user_key) is not gone):
        return None
    outcome = await repo.set_vote(exchange_id, user_key, vote, source=REACTION)
    counted = vote if vote is not None else gone
    if outcome.action is not RateAction.REFUSED and counted is not None:
        metrics.record_rating(int(counted), outcome.action.value)
    return outcome


async def correct(repo: Repository, chat: ChatSettings, incoming: Incoming, text: str) -> str:
    """``/better <text>``: store ``text`` as the reply the user wanted to the bot message they
    answer (in the console: the last reply); what to tell them."""
    exchange_id = await _corrected(repo, incoming)
    if exchange_id is None:
        return NOT_A_REPLY
    text = text.strip()
    if not text:
        return EMPTY
    if len(text) > chat.max_correction_chars:
        return (
            f"That reply is {len(text)} characters; the limit is {chat.max_correction_chars}. "
            "Nothing was stored."
        )
    if await repo.training_opted_out(incoming.user_key):
        return OPTED_OUT
    await repo.signals.correct(exchange_id, incoming.user_key, text)
    return THANKS


async def _corrected(repo: Repository, incoming: Incoming) -> int | None:
    """The exchange a /better answers: the replied-to bot message, or the console's last."""
    if incoming.reply_to_id is not None:
        return await repo.signals.exchange_for_message(incoming.chat_key, incoming.reply_to_id)
    if incoming.platform == CONSOLE:
        return await repo.last_exchange_id(incoming.chat_key)
    return None
