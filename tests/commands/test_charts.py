"""The /stats chart: one axis of whole votes from 0, drawn without pyplot, off the loop."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from matplotlib.patches import Rectangle

from bot.commands import charts
from storage.stats import DailyRatings

FIRST_VOTE = [DailyRatings("2024-05-01", None, 1, 0)]


def test_a_new_bot_s_first_vote_is_one_vote_on_one_axis_from_zero() -> None:
    fig = charts.draw(FIRST_VOTE)
    (ax,) = fig.axes  # no second axis (a share of 👍 made one vote look like 100 %)
    bottom, top = ax.get_ylim()
    assert bottom == 0 and 1 < top <= 3
    ticks = [t for t in ax.get_yticks() if bottom <= t <= top]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_ylabel() == "votes"


def test_liked_and_disliked_stack_per_version() -> None:
    daily = [DailyRatings("2024-05-01", None, 5, 3), DailyRatings("2024-05-02", 1, 7, 1)]
    (ax,) = charts.draw(daily).axes
    heights = sorted(round(p.get_height()) for p in ax.patches if isinstance(p, Rectangle))
    assert heights == [1, 3, 5, 7]
    assert ax.get_ylim()[1] >= 8  # the tallest stack fits


def test_the_chart_module_uses_the_object_api_not_pyplot() -> None:
    tree = ast.parse(Path(charts.__file__).read_text(encoding="utf-8"))
    imported = {
        f"{getattr(node, 'module', '')}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any("pyplot" in name for name in imported)


async def test_charts_draw_in_worker_threads_at_once() -> None:
    pngs = await asyncio.gather(
        *(asyncio.to_thread(charts.ratings_chart, FIRST_VOTE) for _ in range(4))
    )
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
