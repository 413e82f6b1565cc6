"""ChatService: incoming message → stored → prompt → streamed reply → stored; ratings; commands
handed to the command router it is given."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, replace

import bot.metrics as metrics
from bot.chat import rating, signals
from bot.chat.access import Access
from bot.chat.prompt import fit_prompt, to_turns
from bot.chat.ratelimit import RateLimiter
from bot.commands.table import ParsedCommand, parse_command
from bot.errors import GenerationError, ModelLoadError, PromptTooLong
from bot.generation import Generator
from bot.learning.versions import AdapterVersions
from bot.settings import PLATFORMS, Settings
from bot.types import (
    Draft,
    GenerationParams,
    Incoming,
    RateAction,
    RateOutcome,
    Reply,
    ReplyKind,
    Turn,
    Vote,
)
from storage.repository import Repository

log = logging.getLogger(__name__)

Route = Callable[[Incoming, ParsedCommand], Awaitable[Reply]]
"""Answers a parsed command (``bot.commands.router.CommandRouter``, built in ``bot/app.py``)."""

# Chat platforms give every message a stable id; the console numbers its lines per session.
_STABLE_IDS = frozenset(p.name for p in PLATFORMS)


def source_key(incoming: Incoming) -> str | None:
    """``<chat key>/<message id>`` for a platform's message: the same message delivered again
    (after a crash) is stored once and answered once."""
    if incoming.platform not in _STABLE_IDS or not incoming.message_id:
        return None
    return f"{incoming.chat_key}/{incoming.message_id}"


class ChatService:
    """The conversation core every adapter talks to."""

    def __init__(
        self,
        *,
        settings: Settings,
        repo: Repository,
        generator: Generator,
        versions: AdapterVersions,
        route: Route,
        access: Access | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.generator = generator
        self.versions = versions
        self._route = route
        self._limiter = RateLimiter(repo.coordination, settings.chat.user_messages_per_minute)
        self.access = access or Access(settings, repo)  # who is answered (bot/chat/access.py)
        self.deliveries = repo.deliveries  # adapters store updates here before confirming them

    def default_params(self) -> GenerationParams:
        """The configured sampling parameters of a reply."""
        return self.settings.generation.params()

    @property
    def admins(self) -> tuple[str, ...]:
        """The configured admin user keys."""
        return tuple(self.settings.admins)

    async def reply_shown(self, exchange_id: int, platform_id: str) -> None:
        """Record the platform's id of the message that shows a reply."""
        await self.repo.set_reply_platform_id(exchange_id, platform_id)

    def should_answer(self, incoming: Incoming, bot_username: str | None = None) -> bool:
        """Private chats: always. Groups: when mentioned, replied to, or given a command.
        Never to a refused user (or chat) that already had its notice."""
        if self.access.silenced(incoming):
            return False
        if incoming.is_private or incoming.mentions_bot or incoming.reply_to_bot:
            return True
        return parse_command(incoming.text, bot_username) is not None

    async def respond(
        self, incoming: Incoming, *, bot_username: str | None = None
    ) -> AsyncIterator[Draft | Reply]:
        """Answer one message: drafts of the growing reply, then one final Reply.

        The text is already clean: an Incoming cleans its text and sender's name when it is
        built (``bot.types.clean_text``), whichever adapter builds it."""
        refusal = await self.access.check(incoming)
        if refusal is not None:  # not stored, not answered: one short notice
            yield Reply(refusal.notice, ReplyKind.NOTICE)
            return
        text = incoming.text
        if not text:
            yield Reply(
                "Empty message: nothing to answer. Type /help to see what I can do.",
                ReplyKind.NOTICE,
            )
            return
        command = parse_command(text, bot_username)
        if command is not None:
            yield await self._route(incoming, command)
            return
        source = source_key(incoming)
        if source is not None and (stored := await self.repo.deliveries.answer_to(source)):
            yield stored  # answered before a crash cut the delivery short: shown, not rewritten
            return
        message_id = await self.repo.add_user_message(
            incoming.chat_key,
            incoming.user_key,
            incoming.user_name,
            text,
            incoming.message_id,
            source_key=source,
        )
        wait = await self._limiter.check(incoming.user_key)
        if wait > 0:
            yield Reply(
                f"Slow down a little: at most {self.settings.chat.user_messages_per_minute} "
                f"messages a minute. Your message is saved; try again in {wait:.0f} s.",
                ReplyKind.NOTICE,
            )
            return
        async for item in self._generate(incoming, message_id):
            yield item

    async def _sync_versions(self) -> None:
        try:
            await self.versions.sync()
        except (ModelLoadError, GenerationError):  # an adapter it refuses, or its server is down
            log.exception("cannot serve the active adapter; answering with the current one")

    async def _generate(self, incoming: Incoming, message_id: int) -> AsyncIterator[Draft | Reply]:
        await self._sync_versions()
        params = self.default_params()
        try:
            prompt = await self._prompt(incoming, params)
        except PromptTooLong as exc:
            yield Reply(
                f"Your message is too long for me: {exc.tokens} tokens, and I can read at most "
                f"{exc.budget}. It is saved; please send a shorter one.",
                ReplyKind.ERROR,
            )
            return
        except GenerationError as exc:  # e.g. a server's /tokenize
            log.exception("cannot build the prompt")
            yield Reply(_sorry(exc), ReplyKind.ERROR)
            return
        async for item in self._answer(incoming, message_id, prompt, params):
            yield item

    async def _answer(
        self, incoming: Incoming, message_id: int, prompt: list[Turn], params: GenerationParams
    ) -> AsyncIterator[Draft | Reply]:
        """Record the exchange, stream the reply into it, and finish (or fail) it."""
        slot = self.versions.slot_for(incoming.chat_key)  # an A/B test's candidate, or default
        exchange_id = await self.repo.start_exchange(
            incoming.chat_key,
            incoming.user_key,
            message_id,
            prompt,
            self.versions.serving(slot),
            self.generator.model_name,
            asdict(params),
        )

        async def finish(text: str, version: int | None) -> None:
            await self.repo.finish_exchange(exchange_id, text, adapter_version=version)

        async for item in self._stream(
            exchange_id, prompt, params, slot, incoming.platform, finish
        ):
            yield item

    async def _stream(
        self,
        exchange_id: int,
        prompt: list[Turn],
        params: GenerationParams,
        slot: str,
        platform: str,
        finish: Callable[[str, int | None], Awaitable[None]],
    ) -> AsyncIterator[Draft | Reply]:
        """Stream a reply into the started exchange, then ``finish`` it (or mark it failed)."""
        # The generator orders requests against adapter swaps when the stream starts, and there
        # is no await between here and then: the reply records exactly the adapter that wrote it.
        version = self.versions.serving(slot)
        stream = self.generator.stream(prompt, params, slot=slot)
        text, timing = "", _Timing(platform)
        try:
            async for piece in stream:
                text += piece
                timing.piece()
                yield Draft(text)
        except GenerationError as exc:
            log.exception("generation failed for exchange %s", exchange_id)
            await self.repo.fail_exchange(exchange_id, str(exc), text)
            timing.record("error")
            yield Reply(_sorry(exc), ReplyKind.ERROR)
            return
        except (asyncio.CancelledError, GeneratorExit):
            timing.record("cancelled")
            await asyncio.shield(self.repo.fail_exchange(exchange_id, "cancelled", text))
            raise
        except Exception as exc:  # a bug, not a generation failure: recorded, then it goes on
            await self.repo.fail_exchange(exchange_id, f"{type(exc).__name__}: {exc}", text)
            raise
        text = text.strip()
        await finish(text, version)
        timing.record("answer")
        yield Reply(text or "…", ReplyKind.ANSWER, exchange_id=exchange_id, adapter_version=version)

    async def regenerate(
        self, exchange_id: int, user_key: str, *, chat_key: str, platform: str
    ) -> AsyncIterator[Draft | Reply]:
        """🔄: another reply to the exact prompt of ``exchange_id``, sampled again (at least
        ``chat.regenerate_min_temperature``) and streamed; stored as a new exchange linked to
        the first reply of that prompt, which takes the old reply's place in the chat."""
        notice = await self._regenerate_refusal(exchange_id, user_key, chat_key)
        if notice is not None:
            yield Reply(notice, ReplyKind.NOTICE)
            return
        original = await self.repo.exchange(exchange_id)
        assert original is not None  # checked by the refusal
        await self._sync_versions()
        params = self.default_params()
        hotter = max(params.temperature, self.settings.chat.regenerate_min_temperature)
        params = replace(params, temperature=hotter)
        slot = self.versions.slot_for(chat_key)
        new_id = await self.repo.signals.start_regeneration(
            exchange_id, self.versions.serving(slot), self.generator.model_name, asdict(params)
        )

        async def finish(text: str, version: int | None) -> None:
            await self.repo.signals.finish_regeneration(new_id, text, version, replaces=exchange_id)

        async for item in self._stream(
            new_id, list(original.prompt), params, slot, platform, finish
        ):
            yield item

    async def _regenerate_refusal(
        self, exchange_id: int, user_key: str, chat_key: str
    ) -> str | None:
        """Why a 🔄 press gets no new reply (None: it does)."""
        refused = await self.access.rater_refused(user_key)
        if refused is not None:
            return refused
        original = await self.repo.exchange(exchange_id)
        if original is None or original.chat_key != chat_key:
            return "That reply is unknown here; nothing changed."
        wait = await self._limiter.check(user_key)
        if wait > 0:
            return (
                f"Slow down a little: at most {self.settings.chat.user_messages_per_minute} "
                f"messages a minute. Try again in {wait:.0f} s."
            )
        return None

    async def react(
        self,
        chat_key: str,
        platform_id: str,
        user_key: str,
        *,
        added: Sequence[str] = (),
        removed: Sequence[str] = (),
    ) -> RateOutcome | None:
        """A user's reactions on the bot's message ``platform_id`` changed: those that count
        (``chat.liked_reactions``/``disliked_reactions``) are votes, one per user, as buttons
        are. None: not a reply of mine, no reaction that counts, or a refused user."""
        exchange_id = await self.repo.signals.exchange_for_message(chat_key, platform_id)
        if exchange_id is None or await self.access.rater_refused(user_key) is not None:
            return None
        return await signals.react(
            self.repo, self.settings.chat, exchange_id, user_key, added, removed
        )

    async def _prompt(self, incoming: Incoming, params: GenerationParams) -> list[Turn]:
        chat = await self.repo.chat(incoming.chat_key)
        history = await self.repo.history(incoming.chat_key, self.settings.chat.history_messages)
        system = chat.persona or self.settings.chat.system_prompt
        budget = self.generator.context_window - params.max_new_tokens
        turns = to_turns(history, group=not incoming.is_private)
        return await fit_prompt(system, turns, self.generator, budget)

    async def rate(
        self, exchange_id: int, user_key: str, vote: Vote, *, chat_key: str | None = None
    ) -> RateOutcome:
        """Store a 👍/👎 press: one vote per user per reply; the other button changes it, the
        same button again retracts it. ``chat_key`` (when the platform tells) must match the
        reply's chat, so a forged button from another chat changes nothing. A refused user's
        press counts for nothing (their notice is the answer)."""
        refused = await self.access.rater_refused(user_key)
        if refused is not None:
            return RateOutcome(RateAction.REFUSED, exchange_id, None, refused)
        return await rating.rate(self.repo, exchange_id, user_key, vote, chat_key=chat_key)


class _Timing:
    """A reply's timings for ``/metrics``: from the request to the generator (the prompt is
    built by then) to its first text and to its end; stream pieces count as tokens (one per
    decoded token from the local engine, one per streamed chunk from a server)."""

    def __init__(self, platform: str) -> None:
        self._platform = platform
        self._started = time.monotonic()
        self._first: float | None = None
        self._pieces = 0

    def piece(self) -> None:
        if self._first is None:
            self._first = time.monotonic() - self._started
        self._pieces += 1

    def record(self, outcome: str) -> None:
        metrics.record_reply(
            self._platform,
            outcome,
            tokens=self._pieces,
            seconds=time.monotonic() - self._started,
            first_token_s=self._first,
        )


def _sorry(exc: Exception) -> str:
    return (
        f"Sorry, I could not write a reply ({exc}). Your message is saved; "
        "send it again, or /new to start over."
    )
