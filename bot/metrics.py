"""Prometheus metrics of the bot, in one registry (``prometheus_client``; no torch).

The core records into these as it serves (the integrator's calls: ``record_reply`` after a
reply, ``record_rating`` after a vote, ``record_run`` when a training run ends); the gauges that
describe the present (queue depth, running sequences, connected platforms) are set by the
dashboard when ``/metrics`` is scraped. A registry of our own, not the library's global one,
so tests and a second core in one process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

REPLIES = Counter(
    "selftune_replies",
    "Replies sent, by platform and outcome.",
    ["platform", "outcome"],
    registry=REGISTRY,
)
TOKENS = Counter("selftune_tokens", "Tokens generated in replies.", registry=REGISTRY)
REPLY_SECONDS = Histogram(
    "selftune_reply_seconds",
    "Seconds from a message to its complete reply.",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
FIRST_TOKEN_SECONDS = Histogram(
    "selftune_first_token_seconds",
    "Seconds from a message to the first text of its reply.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "selftune_queue_depth", "Requests waiting for the generator.", registry=REGISTRY
)
RUNNING_SEQUENCES = Gauge(
    "selftune_running_sequences", "Sequences in the generator's batch now.", registry=REGISTRY
)
RATINGS = Counter(
    "selftune_ratings",
    "Votes cast, by vote (up, down) and action.",
    ["vote", "action"],
    registry=REGISTRY,
)
TRAINING_RUNS = Counter(
    "selftune_training_runs",
    "Training runs that ended, by status.",
    ["status"],
    registry=REGISTRY,
)
TRAINING_RUNNING = Gauge(
    "selftune_training_running", "1 while a training run is in progress.", registry=REGISTRY
)
PLATFORM_CONNECTED = Gauge(
    "selftune_platform_connected",
    "1 when the platform adapter is connected.",
    ["platform"],
    registry=REGISTRY,
)


def record_reply(
    platform: str,
    outcome: str,
    *,
    tokens: int = 0,
    seconds: float | None = None,
    first_token_s: float | None = None,
) -> None:
    """One reply ended (``outcome``: answer, error, …)."""
    REPLIES.labels(platform, outcome).inc()
    if tokens:
        TOKENS.inc(tokens)
    if seconds is not None:
        REPLY_SECONDS.observe(seconds)
    if first_token_s is not None:
        FIRST_TOKEN_SECONDS.observe(first_token_s)


def record_rating(vote: int, action: str) -> None:
    """A 👍/👎 press (``action``: stored, changed, retracted)."""
    RATINGS.labels("up" if vote > 0 else "down", action).inc()


def record_run(status: str) -> None:
    """A training run ended with ``status``."""
    TRAINING_RUNS.labels(status).inc()


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
