"""What the pages change (POST; the guard has checked the session and its CSRF token).

Each action is recorded in the audit log with the operator's key, then redirects back to the
page it came from with a one-shot message (post/redirect/get)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.errors import UserError
from bot.web.auth import session_of, set_flash
from bot.web.context import CONTEXT, Context

Action = Callable[[Context, str, "Form"], Awaitable[str]]


class Form:
    """The posted fields, with the checks every action needs."""

    def __init__(self, request: web.Request, fields: dict[str, str]) -> None:
        self.match = request.match_info
        self.fields = fields

    def number(self, name: str) -> int:
        raw = self.match.get(name) or self.fields.get(name, "")
        try:
            return int(raw)
        except ValueError:
            raise web.HTTPBadRequest(text=f"{name} must be a number.") from None

    def optional_int(self, name: str) -> int | None:
        return self.number(name) if self.fields.get(name, "").strip() else None

    def text(self, name: str) -> str:
        value = self.fields.get(name, "").strip()
        if not value:
            raise web.HTTPBadRequest(text=f"{name} is missing.")
        return value

    def flag(self, name: str) -> bool:
        return self.fields.get(name) in ("1", "true", "on")


def _back(raw: str | None) -> str:
    target = raw or "/"
    return target if target.startswith("/") and not target.startswith("//") else "/"


def handler(action: Action) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler running ``action``: its message (or a UserError's) goes back."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx, session = request.app[CONTEXT], session_of(request)
        if session is None:  # the guard lets no such request through; this says so to mypy
            raise web.HTTPUnauthorized(text="Log in first.")
        fields = {k: str(v) for k, v in (await request.post()).items()}
        response = web.HTTPSeeOther(_back(fields.get("back")))
        try:
            set_flash(ctx, response, await action(ctx, session.actor, Form(request, fields)))
        except UserError as exc:
            set_flash(ctx, response, str(exc), error=True)
        raise response

    return handle


async def flip_rating(ctx: Context, actor: str, form: Form) -> str:
    """Turn a 👍 into a 👎 or back (audited); training reads the flipped label."""
    rating = form.number("rating_id")
    value = await ctx.deps.repo.curation.flip_rating(rating, actor)
    return f"Rating #{rating} is now {'👍' if value > 0 else '👎'}."


async def drop_rating(ctx: Context, actor: str, form: Form) -> str:
    """Delete a rating (audited): no run trains on it again."""
    rating = form.number("rating_id")
    await ctx.deps.repo.curation.drop_rating(rating, actor)
    return f"Rating #{rating} dropped: no training run will use it."


async def never_train(ctx: Context, actor: str, form: Form) -> str:
    """Mark an exchange never to be trained on (audited; one-way by design)."""
    exchange = form.number("exchange_id")
    await ctx.deps.repo.curation.never_train(exchange, actor)
    return f"Exchange #{exchange} will never be trained on."


async def block_user(ctx: Context, actor: str, form: Form) -> str:
    """Block or unblock a user key (audited): not answered, ratings not trained on."""
    user, blocked = form.text("user_key"), form.flag("blocked")
    await ctx.deps.repo.curation.set_user(user, actor, blocked=blocked)
    return f"{user} is {'blocked' if blocked else 'unblocked'}."


async def exclude_user(ctx: Context, actor: str, form: Form) -> str:
    """Leave a user's ratings out of training, or let them back in (audited)."""
    user, excluded = form.text("user_key"), form.flag("excluded")
    await ctx.deps.repo.curation.set_user(user, actor, ratings_excluded=excluded)
    return f"{user}'s ratings are {'excluded from' if excluded else 'used in'} training."


async def activate(ctx: Context, actor: str, form: Form) -> str:
    """Serve a version now (0 or empty: the base model), audited."""
    version, before = form.optional_int("version"), ctx.deps.versions.current
    await ctx.deps.versions.activate(version)
    detail = {"before": before, "after": version}
    await ctx.deps.repo.curation.record(actor, "adapter.activate", f"adapter:{version}", detail)
    return f"Now serving {_name(version)}."


async def rollback(ctx: Context, actor: str, form: Form) -> str:
    """Serve the version before the current one (or the one named), audited."""
    before = ctx.deps.versions.current
    now = await ctx.deps.versions.rollback(form.optional_int("version"))
    detail = {"before": before, "after": now}
    await ctx.deps.repo.curation.record(actor, "adapter.rollback", f"adapter:{before}", detail)
    return f"Rolled back from {_name(before)}: now serving {_name(now)}."


async def ab_start(ctx: Context, actor: str, form: Form) -> str:
    """Start an A/B test of a version on a share of chats, audited."""
    version = form.number("version")
    try:
        share = float(form.fields["share"]) if form.fields.get("share") else None
    except ValueError:
        raise web.HTTPBadRequest(text="share must be a number such as 0.2.") from None
    message = await ctx.deps.ab.start(version, share, actor)
    await ctx.deps.repo.curation.record(actor, "ab.start", f"adapter:{version}", {"share": share})
    return message


async def ab_promote(ctx: Context, actor: str, _form: Form) -> str:
    """End the A/B test by serving its candidate to everyone, audited."""
    message = await ctx.deps.ab.promote()
    await ctx.deps.repo.curation.record(actor, "ab.promote", "ab", {})
    return message


async def ab_retire(ctx: Context, actor: str, _form: Form) -> str:
    """End the A/B test and keep serving the control, audited."""
    message = await ctx.deps.ab.retire()
    await ctx.deps.repo.curation.record(actor, "ab.retire", "ab", {})
    return message


def _name(version: int | None) -> str:
    return "the base model" if version is None else f"adapter v{version}"


ROUTES: dict[str, Action] = {
    "/ratings/{rating_id}/flip": flip_rating,
    "/ratings/{rating_id}/drop": drop_rating,
    "/exchanges/{exchange_id}/never-train": never_train,
    "/users/block": block_user,
    "/users/exclude": exclude_user,
    "/adapters/activate": activate,
    "/adapters/rollback": rollback,
    "/ab/start": ab_start,
    "/ab/promote": ab_promote,
    "/ab/retire": ab_retire,
}
