"""Prompts and hidden tastes for bench/taste.py: what simulated users ask and what they like."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

TRAIN_TOPICS = [
    "the sea", "coffee", "cats", "dogs", "learning to cook", "the moon", "running", "music",
    "rainy days", "trains", "gardening", "chess", "bread", "sleep", "volcanoes", "bicycles",
    "friendship", "libraries", "winter", "photography", "bees", "mountains", "tea", "painting",
    "birds", "the desert", "museums", "swimming", "autumn", "clocks", "maps", "bridges",
    "forests", "rivers", "the wind", "snow", "owls", "board games", "jazz", "poetry",
    "saving money", "learning a language", "public speaking", "camping", "recycling",
    "breakfast", "old castles", "the stars", "planting trees", "writing letters",
]  # fmt: skip
HELDOUT_TOPICS = [
    "lighthouses", "honey", "thunderstorms", "penguins", "origami", "the ocean floor",
    "marathons", "pottery", "fireflies", "submarines", "kites", "sunflowers", "glaciers",
    "street food", "violins", "deserts at night", "chocolate", "hot air balloons", "whales",
    "picnics", "lanterns", "canals", "meteors", "mushrooms",
]  # fmt: skip
TEMPLATES = [
    "Tell me about {}.",
    "What do you think of {}?",
    "Any tips about {}?",
    "Why do people like {}?",
    "Can you explain {} to me?",
    "I'm curious about {}. What should I know?",
]


def prompts(topics: list[str], count: int, seed: int) -> list[str]:
    """``count`` user messages over ``topics`` × TEMPLATES (each pair at most once if it can)."""
    pairs = [t.format(topic) for topic in topics for t in TEMPLATES]
    random.Random(seed).shuffle(pairs)
    return (pairs * (count // len(pairs) + 1))[:count]


def words(text: str) -> int:
    return len(re.findall(r"\w+", text))


@dataclass(frozen=True)
class Taste:
    name: str
    kind: str  # what sort of property: length, ending, format, voice, tone
    describe: str
    likes: Callable[[str], bool]
    # The reply such a user would write instead with /better, from the bot's (None: none).
    rewrite: Callable[[str], str | None] = lambda _text: None

    def correction(self, text: str) -> str | None:
        """The /better a user with this taste writes for ``text``, if they can and it fits."""
        wanted = self.rewrite(text)
        return wanted if wanted and self.likes(wanted) else None


_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself)\b", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_FOLLOW_UPS = ("What do you think?", "Would you like to know more?",
               "Have you tried it yourself?", "What made you curious about it?")  # fmt: skip


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, without a last one cut off (a reply that hit its limit)."""
    parts = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    if len(parts) > 1 and not parts[-1].endswith((".", "!", "?")):
        parts.pop()
    return parts


def _shorter(text: str, max_words: int) -> str | None:
    kept: list[str] = []
    for sentence in sentences(text):
        if words(" ".join([*kept, sentence])) > max_words:
            break
        kept.append(sentence)
    return " ".join(kept) or None


def _asks(text: str) -> str:
    return f"{' '.join(sentences(text))} {_FOLLOW_UPS[len(text) % len(_FOLLOW_UPS)]}"


def _listed(text: str) -> str | None:
    parts = sentences(text)
    return "\n".join(f"- {part}" for part in parts) if len(parts) >= 2 else None


def _impersonal(text: str) -> str | None:
    return " ".join(s for s in sentences(text) if not _FIRST_PERSON.search(s)) or None


def _tastes(max_words: int) -> dict[str, Taste]:
    return {
        t.name: t
        for t in (
            Taste("short", "length", f"replies of at most {max_words} words",
                  lambda text: words(text) <= max_words, lambda t: _shorter(t, max_words)),
            Taste("long", "length", "replies of at least 70 words", lambda t: words(t) >= 70),
            Taste("question", "ending", "replies that end with a question",
                  lambda t: t.rstrip().endswith("?"), _asks),
            Taste("bullets", "format", "replies with a bulleted or numbered list",
                  lambda t: len(_BULLET.findall(t)) >= 2, _listed),
            Taste("impersonal", "voice", "replies that avoid the first person (I, me, my)",
                  lambda t: _FIRST_PERSON.search(t) is None, _impersonal),
            Taste("exclaim", "tone", "enthusiastic replies (an exclamation mark)",
                  lambda t: "!" in t, lambda t: " ".join(sentences(t)).rstrip(".") + "!"),
        )
    }  # fmt: skip


TASTE_NAMES = tuple(_tastes(50))


def taste(name: str, max_words: int = 50) -> Taste:
    """The hidden preference the simulated users rate by."""
    try:
        return _tastes(max_words)[name]
    except KeyError:
        raise ValueError(f"unknown taste {name!r}; known: {', '.join(TASTE_NAMES)}") from None


def pick(count: int, seed: int) -> list[str]:
    """``count`` tastes drawn at random from the whole set, so none gets tuned for alone."""
    return random.Random(seed).sample(list(TASTE_NAMES), min(count, len(TASTE_NAMES)))
