"""/stats as a picture: ratings per day per adapter version (PNG), and the numbers as text."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no screen: render to memory

from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from storage.stats import DailyRatings


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


def ratings_chart(daily: Sequence[DailyRatings]) -> bytes:
    """Share of 👍 per day, one line per adapter version, with vote counts as bars."""
    fig: Figure = plt.figure(figsize=(8, 4.5), dpi=100)
    try:
        share_ax = fig.add_subplot(1, 1, 1)
        count_ax = share_ax.twinx()
        days = sorted({row.day for row in daily})
        index = {day: i for i, day in enumerate(days)}
        versions = sorted({row.adapter_version for row in daily}, key=lambda v: v or 0)
        width = 0.8 / max(1, len(versions))
        for n, version in enumerate(versions):
            rows = [row for row in daily if row.adapter_version == version]
            xs = [index[row.day] for row in rows]
            shares = [100.0 * row.ups / max(1, row.ups + row.downs) for row in rows]
            totals = [row.ups + row.downs for row in rows]
            line = share_ax.plot(xs, shares, marker="o", label=_label(version))[0]
            offsets = [x - 0.4 + width * (n + 0.5) for x in xs]
            count_ax.bar(offsets, totals, width=width, alpha=0.2, color=line.get_color())
        share_ax.set_ylim(0, 105)
        share_ax.set_ylabel("liked (%)")
        count_ax.set_ylabel("votes")
        share_ax.set_xticks(range(len(days)), days, rotation=30, ha="right", fontsize=8)
        share_ax.set_title("Ratings per day and adapter version")
        share_ax.legend(loc="lower left", title="adapter")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)
