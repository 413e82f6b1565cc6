"""The admin commands of access: /block and /unblock a user key, /dashboard's login link.

A block is stored in the database (``repo.curation.set_user``, audited with who and when),
the same record the dashboard's Users page changes: the chat refuses the user from their next
message on, and their ratings stop training (``repo.training.rated`` leaves them out).
"""

from __future__ import annotations

from bot.commands.context import CommandContext
from bot.errors import UserError
from bot.types import Incoming, Reply, ReplyKind

DASHBOARD_OFF = (
    "The web dashboard is off. Turn it on with `enabled = true` under `[web]` in the "
    "configuration (or SELFTUNE_WEB__ENABLED=true) and restart; /dashboard then sends you a "
    "one-time login link."
)


def _user_key(args: str, usage: str) -> str:
    key = args.strip()
    platform, _, ident = key.partition(":")
    if not platform or not ident or " " in key:
        raise UserError(f"Usage: {usage} (a user key such as telegram:42).") from None
    return key


async def block(ctx: CommandContext, incoming: Incoming, args: str) -> Reply:
    """Block a user key: one short notice, then no answers; their ratings never train."""
    key = _user_key(args, "/block USER_KEY")
    if ctx.settings.is_admin(key):
        raise UserError(f"{key} is an admin; remove it from `admins` first.")
    await ctx.repo.curation.set_user(key, incoming.user_key, blocked=True)
    if ctx.access is not None:
        ctx.access.remember(key, True)
    return Reply(
        f"Blocked {key}: not answered from now on, ratings excluded from training. "
        f"/unblock {key} lifts it.",
        ReplyKind.COMMAND,
    )


async def unblock(ctx: CommandContext, incoming: Incoming, args: str) -> Reply:
    """Lift a block made by /block (or on the dashboard)."""
    key = _user_key(args, "/unblock USER_KEY")
    await ctx.repo.curation.set_user(key, incoming.user_key, blocked=False)
    if ctx.access is not None:
        ctx.access.remember(key, False)
    text = f"Unblocked {key}."
    if key in ctx.settings.access.block_users:
        text += " It is still blocked by `access.block_users` in the configuration."
    elif ctx.settings.access.allow_users and key not in ctx.settings.access.allow_users:
        text += " It is not on `access.allow_users`, so it is still not answered."
    return Reply(text, ReplyKind.COMMAND)


async def dashboard(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """A one-time login link to the web dashboard, for this admin only."""
    if ctx.login_link is None:
        return Reply(DASHBOARD_OFF, ReplyKind.COMMAND)
    try:
        link = ctx.login_link(incoming.user_key)
    except PermissionError:
        raise UserError(
            f"The dashboard is for the admins listed in `admins`; add {incoming.user_key} there."
        ) from None
    minutes = max(1, ctx.settings.web.link_ttl_s // 60)
    return Reply(
        f"Your login link (works once, for {minutes} min; do not share it):\n{link}",
        ReplyKind.COMMAND,
    )
