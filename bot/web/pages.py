"""The pages (GET): each reads through ``WebDeps`` and renders one template."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from bot.learning.protocol import Event, Phase, Step
from bot.types import AdapterStatus
from bot.web.auth import FLASH_COOKIE, read_flash, session_of
from bot.web.charts import DayBar, daily_ratings, loss_curve
from bot.web.context import CONTEXT
from bot.web.views import html, lineage
from storage.dashboard import RatingFilter


def render(request: web.Request, name: str, **context: Any) -> web.Response:
    """A page with the layout's needs: the session (and its CSRF token) and a flash."""
    ctx = request.app[CONTEXT]
    flash, session = read_flash(request), session_of(request)
    response = html(ctx.env, name, session=session, flash=flash, **context)
    if FLASH_COOKIE in request.cookies:
        response.del_cookie(FLASH_COOKIE, path="/")
    return response


def progress_line(event: Event | None) -> str:
    """The trainer's last event in words: a step with its loss, a phase, or that it starts."""
    if isinstance(event, Step):
        return f"step {event.step}/{event.total_steps}, loss {event.loss:.3f}"
    if isinstance(event, Phase):
        return event.phase
    return "starting"


async def overview(request: web.Request) -> web.StreamResponse:
    """The overview: model, serving LoRA, A/B state, activity, training progress."""
    ctx = request.app[CONTEXT]
    deps, repo = ctx.deps, ctx.deps.repo
    test = await repo.ab.running()
    return render(
        request,
        "overview.html",
        generator=deps.generator(),
        serving=deps.versions.current,
        ab_test=test,
        ab_status=await deps.ab.status() if test else None,
        active_chats=await repo.dashboard.active_chats(),
        replies_5m=await repo.dashboard.recent_replies(timedelta(minutes=5)),
        tokens_per_s=ctx.sampler.tokens_per_s,
        training=progress_line(deps.training.progress) if deps.training.running else None,
        platforms=dict(deps.adapters()),
        counts=await repo.stats.counts(),
        audit=await repo.curation.audit(8),
        refresh=10 if deps.training.running else None,  # follow a run without a script
    )


async def chats(request: web.Request) -> web.StreamResponse:
    """Chats by platform, newest first, with a search over their messages."""
    dashboard = request.app[CONTEXT].deps.repo.dashboard
    platform, search = request.query.get("platform") or None, request.query.get("q") or None
    return render(
        request,
        "chats.html",
        chats=await dashboard.chats(platform, search),
        platforms=await dashboard.platforms(),
        platform=platform or "",
        q=search or "",
    )


async def transcript(request: web.Request) -> web.StreamResponse:
    """One chat's transcript: each reply's ratings, version and exact prompt."""
    key = request.match_info["key"]
    lines = await request.app[CONTEXT].deps.repo.dashboard.transcript(key)
    if not lines:
        raise web.HTTPNotFound(text="No such chat, or nothing in it.")
    return render(request, "transcript.html", chat_key=key, lines=lines)


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        raise web.HTTPBadRequest(text="Expected a number.") from None


def _day(raw: str | None, plus: int = 0) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw) + timedelta(days=plus)
    except ValueError:
        raise web.HTTPBadRequest(text="Dates are YYYY-MM-DD.") from None


def rating_filter(query: Any) -> RatingFilter:
    """The Ratings page's query string as a filter (``until`` includes its day)."""
    label = {"up": 1, "down": -1}.get(query.get("label", ""))
    return RatingFilter(
        label=label,
        user_key=query.get("user") or None,
        chat_key=query.get("chat") or None,
        adapter_version=_int(query.get("version")),
        since=_day(query.get("since")),
        until=_day(query.get("until"), plus=1),
    )


async def ratings(request: web.Request) -> web.StreamResponse:
    """Ratings with filters (label, user, chat, version, dates) and curation actions."""
    repo = request.app[CONTEXT].deps.repo
    votes = await repo.dashboard.ratings(rating_filter(request.query))
    return render(request, "ratings.html", votes=votes, q=dict(request.query))


async def users(request: web.Request) -> web.StreamResponse:
    """Users: how much each rates, opt-out and forget state, block and exclude."""
    repo = request.app[CONTEXT].deps.repo
    listed = await repo.dashboard.users()
    controls = await repo.curation.controls()
    seen = {u.key for u in listed}
    unseen = [c for key, c in sorted(controls.items()) if key not in seen]
    return render(request, "users.html", users=listed, controls=controls, unseen=unseen)


async def adapters(request: web.Request) -> web.StreamResponse:
    """Versions as a lineage tree with the gate's metrics and reasons, and actions."""
    ctx = request.app[CONTEXT]
    versions = await ctx.deps.repo.adapters.all()
    test = await ctx.deps.repo.ab.running()
    return render(
        request,
        "adapters.html",
        roots=lineage(versions),
        serving=ctx.deps.versions.current,
        ab_test=test,
        ab_status=await ctx.deps.ab.status() if test else None,
        ab_history=await ctx.deps.repo.ab.history(10),
        share=ctx.deps.settings.ab.share or 0.1,
        rejected=AdapterStatus.REJECTED,
    )


async def runs(request: web.Request) -> web.StreamResponse:
    """The latest training runs."""
    recent = await request.app[CONTEXT].deps.repo.runs.recent(50)
    return render(request, "runs.html", runs=recent)


async def run(request: web.Request) -> web.StreamResponse:
    """One training run: loss curve, curation report, gate, duration."""
    ctx = request.app[CONTEXT]
    run_id = _int(request.match_info["run_id"]) or 0
    detail = await ctx.deps.repo.dashboard.run(run_id)
    if detail is None:
        raise web.HTTPNotFound(text=f"No training run #{run_id}.")
    stored = detail.report.get("metrics", {}).get("losses")
    points = (
        list(enumerate(stored, start=1))
        if isinstance(stored, list)
        else ctx.sampler.losses.get(run_id, [])
    )
    return render(request, "run.html", run=detail, chart=loss_curve(points), report=detail.report)


async def stats(request: web.Request) -> web.StreamResponse:
    """Ratings per day per version, with the days versions went live."""
    repo = request.app[CONTEXT].deps.repo
    daily = await repo.stats.daily_ratings()
    bars = [DayBar(d.day, d.adapter_version, d.ups, d.downs) for d in daily]
    # When a version went live: released on the day it was made (unless the gate rejected
    # it), or activated later by hand (the audit log).
    live = {
        (v.created_at.date().isoformat(), v.version)
        for v in await repo.adapters.all()
        if v.status is not AdapterStatus.REJECTED
    }
    for entry in await repo.curation.audit(500, action="adapter.activate"):
        version = entry.detail.get("after")
        if isinstance(version, int):
            live.add((entry.at.date().isoformat(), version))
    return render(request, "stats.html", chart=daily_ratings(bars, sorted(live)), daily=daily)


async def audit(request: web.Request) -> web.StreamResponse:
    """The audit log of every operator action."""
    entries = await request.app[CONTEXT].deps.repo.curation.audit(500)
    return render(request, "audit.html", entries=entries)
