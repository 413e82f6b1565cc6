"""Charts as inline SVG, built here (no matplotlib, no script): the loss curve of a training
run and the ratings per day per adapter version. Every text is escaped; the y axis starts at
zero, so a new bot's handful of votes does not look like a landslide."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 720, 260, 40
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1")


@dataclass(frozen=True)
class DayBar:
    """Votes of one day on replies of one version (None: the base model)."""

    day: str
    version: int | None
    ups: int
    downs: int


def _svg(body: list[str], label: str) -> Markup:
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
    )
    return Markup(head + "".join(body) + "</svg>")


def _axes(top: float) -> list[str]:
    bottom, right = HEIGHT - PAD, WIDTH - 10
    return [
        f'<line x1="{PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>',
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{bottom}" class="axis"/>',
        f'<text x="{PAD - 4}" y="{bottom}" class="tick" text-anchor="end">0</text>',
        f'<text x="{PAD - 4}" y="16" class="tick" text-anchor="end">{escape(_num(top))}</text>',
    ]


def _num(value: float) -> str:
    return f"{value:.3g}"


def loss_curve(points: Sequence[tuple[int, float]]) -> Markup | None:
    """The training loss by step; None when there are fewer than two points."""
    if len(points) < 2:
        return None
    top = max(loss for _, loss in points) or 1.0
    last = max(step for step, _ in points) or 1
    span_x, span_y = WIDTH - PAD - 10, HEIGHT - PAD - 10
    coords = " ".join(
        f"{PAD + span_x * step / last:.1f},{HEIGHT - PAD - span_y * loss / top:.1f}"
        for step, loss in points
    )
    body = [
        *_axes(top),
        f'<polyline points="{coords}" class="line"/>',
        f'<text x="{WIDTH - 10}" y="{HEIGHT - PAD + 16}" class="tick" text-anchor="end">'
        f"step {last}</text>",
    ]
    return _svg(body, "training loss by step")


def daily_ratings(bars: Sequence[DayBar], live: Sequence[tuple[str, int]]) -> Markup | None:
    """Stacked bars: votes per day, coloured by the version that wrote the rated reply; a
    dashed line on each day an adapter version went live (``live``: (day, version))."""
    if not bars:
        return None
    days = sorted({b.day for b in bars} | {day for day, _ in live if day >= bars[0].day})
    versions = sorted({b.version or 0 for b in bars})
    totals = {d: sum(b.ups + b.downs for b in bars if b.day == d) for d in days}
    top = max(5, *totals.values())  # a floor: three votes do not fill the chart
    step = (WIDTH - PAD - 10) / len(days)
    scale = (HEIGHT - PAD - 10) / top
    body = _axes(top)
    for i, day in enumerate(days):
        body += _stack(
            day, [b for b in bars if b.day == day], versions, PAD + i * step, step, scale
        )
        if len(days) <= 14 or i % max(1, len(days) // 10) == 0:
            body.append(
                f'<text x="{PAD + (i + 0.5) * step:.1f}" y="{HEIGHT - PAD + 16}" '
                f'class="tick" text-anchor="middle">{escape(day[5:])}</text>'
            )
    body += _live_markers(days, live, step)
    body += _legend(versions)
    return _svg(body, "ratings per day per adapter version")


def _live_markers(days: list[str], live: Sequence[tuple[str, int]], step: float) -> list[str]:
    """One dashed line per day on which versions went live, labelled with all of them."""
    by_day: dict[str, list[int]] = {}
    for day, version in sorted(set(live)):
        by_day.setdefault(day, []).append(version)
    parts = []
    for day, versions in by_day.items():
        if day not in days:
            continue
        x = PAD + (days.index(day) + 0.05) * step
        label = ", ".join(f"v{v}" for v in versions) + " live"
        parts.append(f'<line x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{HEIGHT - PAD}" class="live"/>')
        parts.append(f'<text x="{x + 3:.1f}" y="22" class="tick">{escape(label)}</text>')
    return parts


def _stack(
    day: str, bars: list[DayBar], versions: list[int], x: float, width: float, scale: float
) -> list[str]:
    parts, y = [], float(HEIGHT - PAD)
    for bar in sorted(bars, key=lambda b: b.version or 0):
        height = (bar.ups + bar.downs) * scale
        y -= height
        color = COLORS[versions.index(bar.version or 0) % len(COLORS)]
        title = f"{day} {_name(bar.version)}: {bar.ups} 👍 / {bar.downs} 👎"
        parts.append(
            f'<rect x="{x + width * 0.15:.1f}" y="{y:.1f}" width="{width * 0.7:.1f}" '
            f'height="{height:.1f}" fill="{color}"><title>{escape(title)}</title></rect>'
        )
    return parts


def _legend(versions: list[int]) -> list[str]:
    parts = []
    for i, version in enumerate(versions):
        x = PAD + 10 + i * 90
        color = COLORS[i % len(COLORS)]
        parts.append(f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{color}"/>')
        parts.append(
            f'<text x="{x + 14}" y="{HEIGHT - 5}" class="tick">{escape(_name(version))}</text>'
        )
    return parts


def _name(version: int | None) -> str:
    return f"v{version}" if version else "base"
