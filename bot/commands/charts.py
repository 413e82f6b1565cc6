"""/stats as a picture: ratings per day per adapter version (PNG), and the numbers as text."""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from storage.signals import SignalCounts
from storage.stats import DailyRatings

_SOURCES = {"button": "buttons and /good, /bad", "reaction": "reactions", "correction": "/better"}


def _label(version: int | None) -> str:
    return "base" if version is None else f"v{version}"


def ratings_table(daily: Sequence[DailyRatings]) -> str:
    """Totals per adapter version, then the daily rows."""
    totals: dict[int | None, list[int]] = {}
    for row in daily:
        bucket = totals.setdefault(row.adapter_version, [0, 0])
        bucket[0] += row.ups
        bucket[1] += row.downs
    lines = ["Ratings per adapter version (👍 / 👎, share liked):"]
    for version, (ups, downs) in sorted(totals.items(), key=lambda item: item[0] or 0):
        share = 100.0 * ups / (ups + downs) if ups + downs else 0.0
        lines.append(f"  {_label(version):>5}: {ups:4d} / {downs:4d}  ({share:.0f}% liked)")
    lines.append("Per day:")
    lines.extend(
        f"  {row.day} {_label(row.adapter_version):>5}: {row.ups} / {row.downs}" for row in daily
    )
    return "\n".join(lines)


def signals_table(counts: SignalCounts, pairs: int) -> str:
    """How users gave their signals: votes by source, regenerations, corrections, pairs."""
    lines = ["Signals:"]
    for source, n in counts.votes_by_source.items():
        lines.append(f"  votes by {_SOURCES.get(source, source)}: {n}")
    lines.append(f"  🔄 regenerated replies: {counts.regenerations}")
    lines.append(f"  /better corrections: {counts.corrections}")
    lines.append(f"  preference pairs (usable for training): {pairs}")
    return "\n".join(lines)


def ratings_chart(daily: Sequence[DailyRatings]) -> bytes:
    """The chart of ``draw`` as PNG."""
    buffer = io.BytesIO()
    draw(daily).savefig(buffer, format="png")
    return buffer.getvalue()


def draw(daily: Sequence[DailyRatings]) -> Figure:
    """Votes per day as bars, one per adapter version: 👍 solid, 👎 stacked on top, hatched.

    One axis of counts from 0 with whole-number ticks, so a new bot's first few votes look like
    a few votes (a share of 👍 on a second axis made one vote look like 100 %). Drawn with the
    object API (``Figure``, no pyplot state): safe in a worker thread, which is where /stats
    draws it.
    """
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    days = sorted({row.day for row in daily})
    index = {day: i for i, day in enumerate(days)}
    versions = sorted({row.adapter_version for row in daily}, key=lambda v: v or 0)
    width = 0.8 / max(1, len(versions))
    handles: list[Patch] = []
    for n, version in enumerate(versions):
        rows = [row for row in daily if row.adapter_version == version]
        xs = [index[row.day] - 0.4 + width * (n + 0.5) for row in rows]
        color = f"C{n % 10}"
        ups = [row.ups for row in rows]
        downs = [row.downs for row in rows]
        ax.bar(xs, ups, width=width, color=color)
        ax.bar(xs, downs, width=width, bottom=ups, color=color, alpha=0.35, hatch="//")
        handles.append(Patch(color=color, label=_label(version)))
    handles.append(Patch(facecolor="white", edgecolor="grey", label="liked (solid)"))
    handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="disliked"))
    _axes(ax, days, max((row.ups + row.downs for row in daily), default=0))
    ax.legend(handles=handles, loc="upper left", title="adapter", fontsize=8)
    fig.tight_layout()
    return fig


def _axes(ax: Axes, days: list[str], highest: int) -> None:
    # From 0, whole votes, and headroom above the highest bar for the legend.
    ax.set_ylim(0, highest + max(1.0, highest * 0.3))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("votes")
    ax.set_xticks(range(len(days)), days, rotation=30, ha="right", fontsize=8)
    ax.set_title("Ratings per day and adapter version")
