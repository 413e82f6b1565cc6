"""👍/👎 under every answer: persistent buttons that keep working after a restart.

Each button is a ``ui.DynamicItem`` whose ``custom_id`` carries the rating itself
(``rate:<exchange id>:<1|-1>``, base.encode_rating); the client registers the class at start-up,
so a press on a message sent by an earlier process is rebuilt from its id alone. Nothing about
a button lives in memory, and a forged id changes nothing: it is parsed strictly and the
exchange must belong to the chat the press came from.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from adapters.base import (
    AGAIN_PREFIX,
    RATING_PREFIX,
    ChatCore,
    encode_again,
    encode_rating,
    parse_rating,
)
from adapters.discord.incoming import PLATFORM, chat_key_of
from adapters.discord.sdk import discord, ui
from bot.types import RateAction, Vote

log = logging.getLogger(__name__)

# Anything ``rate:``-prefixed reaches the handler, which then parses it strictly: a malformed
# id gets an explanation instead of the silent "interaction failed" of an unmatched button.
RATE_TEMPLATE = rf"{RATING_PREFIX}:.*"
AGAIN_TEMPLATE = rf"{AGAIN_PREFIX}:.*"
AGAIN_LABEL = "🔄"
FORGED = "That button is not one of mine (or it was changed), so nothing was rated."
FAILED = "Sorry, I could not store that rating just now. Please press the button again."


def vote_label(vote: Vote, count: int) -> str:
    """Button text: the emoji and how many people chose it (``👍 2``)."""
    return f"{'👍' if vote is Vote.UP else '👎'} {count}"


class RateButton(ui.DynamicItem[ui.Button[ui.View]], template=RATE_TEMPLATE):
    """One of the two rating buttons; it finds the RatingHandler on the client when pressed."""

    def __init__(self, custom_id: str, label: str) -> None:
        super().__init__(
            ui.Button(style=discord.ButtonStyle.secondary, label=label, custom_id=custom_id)
        )

    @classmethod
    async def from_custom_id(
        cls,
        _interaction: discord.Interaction[discord.Client],  # discord.py's signature; unused
        item: ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> RateButton:
        label = item.label if isinstance(item, ui.Button) else None
        return cls(match.string, label or "")

    async def callback(self, interaction: discord.Interaction[discord.Client]) -> None:
        handler = getattr(interaction.client, "ratings", None)
        if isinstance(handler, RatingHandler):
            await handler.press(interaction, self.custom_id)


class AgainButton(ui.DynamicItem[ui.Button[ui.View]], template=AGAIN_TEMPLATE):
    """🔄: another reply, written over this one; persistent like the rating buttons."""

    def __init__(self, custom_id: str) -> None:
        super().__init__(
            ui.Button(style=discord.ButtonStyle.secondary, label=AGAIN_LABEL, custom_id=custom_id)
        )

    @classmethod
    async def from_custom_id(
        cls,
        _interaction: discord.Interaction[discord.Client],  # discord.py's signature; unused
        _item: ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AgainButton:
        return cls(match.string)

    async def callback(self, interaction: discord.Interaction[discord.Client]) -> None:
        handler = getattr(interaction.client, "ratings", None)
        if isinstance(handler, RatingHandler):
            await handler.again(interaction, self.custom_id)


def rating_view(exchange_id: int, ups: int = 0, downs: int = 0) -> ui.View:
    """The 👍/👎/🔄 row of a final reply; ``timeout=None`` because ratings never expire."""
    view = ui.View(timeout=None)
    view.add_item(RateButton(encode_rating(exchange_id, Vote.UP), vote_label(Vote.UP, ups)))
    view.add_item(RateButton(encode_rating(exchange_id, Vote.DOWN), vote_label(Vote.DOWN, downs)))
    view.add_item(AgainButton(encode_again(exchange_id)))
    return view


def _custom_id(interaction: discord.Interaction[discord.Client]) -> str:
    data = cast(dict[str, Any], interaction.data or {})
    value = data.get("custom_id")
    return value if isinstance(value, str) else ""


def taken_by_button(interaction: discord.Interaction[discord.Client]) -> bool:
    """Whether discord.py will hand this press to a RateButton: the id fits the template and
    the pressed message carries a button with that id (the same test the library applies)."""
    custom_id = _custom_id(interaction)
    ours = any(re.fullmatch(t, custom_id) for t in (RATE_TEMPLATE, AGAIN_TEMPLATE))
    if not ours or interaction.message is None:
        return False
    for row in interaction.message.components:
        children = row.children if isinstance(row, discord.ActionRow) else [row]
        if any(getattr(child, "custom_id", None) == custom_id for child in children):
            return True
    return False


Again = Callable[[discord.Interaction[discord.Client], str], Awaitable[None]]


class RatingHandler:
    """Stores presses through ChatCore.rate and shows the new counts on the buttons; hands
    🔄 presses to ``again`` (``adapters.discord.signals``)."""

    def __init__(self, service: ChatCore, again: Again | None = None) -> None:
        self._service = service
        self._again = again

    async def again(self, interaction: discord.Interaction[discord.Client], custom_id: str) -> None:
        """A 🔄 press: another reply over this one (acknowledged at once by the handler)."""
        if self._again is None:
            await interaction.response.send_message(FORGED, ephemeral=True)
            return
        try:
            await self._again(interaction, custom_id)
        except discord.HTTPException:
            log.warning("could not answer a 🔄 press", exc_info=True)

    async def press(self, interaction: discord.Interaction[discord.Client], custom_id: str) -> None:
        """One press: acknowledge at once (Discord allows 3 s), then rate and answer privately."""
        await interaction.response.defer()
        try:
            await self._rate(interaction, custom_id)
        except discord.HTTPException:
            log.warning("could not answer a rating press", exc_info=True)
        except Exception:
            log.exception("rating press %s failed", custom_id)
            await interaction.followup.send(FAILED, ephemeral=True)

    async def _rate(self, interaction: discord.Interaction[discord.Client], custom_id: str) -> None:
        parsed = parse_rating(custom_id)
        if parsed is None:
            await interaction.followup.send(FORGED, ephemeral=True)
            return
        exchange_id, vote = parsed
        outcome = await self._service.rate(
            exchange_id,
            f"{PLATFORM}:{interaction.user.id}",
            vote,
            chat_key=chat_key_of(interaction.channel, interaction.channel_id or 0),
        )
        if outcome.action is RateAction.REFUSED:
            await interaction.followup.send(outcome.message, ephemeral=True)
            return
        view = rating_view(exchange_id, outcome.ups, outcome.downs)
        await interaction.edit_original_response(view=view)
        await interaction.followup.send(outcome.message, ephemeral=True)

    async def answer_stray(self, interaction: discord.Interaction[discord.Client]) -> None:
        """A button press no RateButton takes (its id is not on the message, or not ours):
        explain instead of letting Discord show "This interaction failed"."""
        if interaction.type is not discord.InteractionType.component:
            return
        if taken_by_button(interaction):
            return
        log.info("stray component press %r", _custom_id(interaction)[:100])
        await interaction.response.send_message(FORGED, ephemeral=True)
