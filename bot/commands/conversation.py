"""The commands every user has: start, help, whoami, new, persona, good, bad, better, forget,
optout, optin.

Each is ``async (context, incoming, args) -> Reply``; the spec in ``table.py`` names it and says
who sees the answer.
"""

from __future__ import annotations

from bot.chat import signals
from bot.chat.rating import rate
from bot.commands.context import CommandContext
from bot.commands.table import help_text
from bot.types import Incoming, Reply, ReplyKind, Vote

_RESETS = ("reset", "default", "clear")


def _reply(text: str) -> Reply:
    return Reply(text, ReplyKind.COMMAND)


async def start(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """A greeting and the commands this user may use."""
    return _reply(
        f"Hello, {incoming.user_name or 'there'}! I am a chat bot that learns "
        f"from your ratings.\n\n{help_text(ctx.is_admin(incoming))}"
    )


async def help(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """The commands this user may use."""
    return _reply(help_text(ctx.is_admin(incoming)))


async def whoami(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """The asker's user key and the chat's key: what ``admins`` and ``schedule.notify_chats``
    take, so a self-hoster can find their own without reading logs."""
    key = incoming.user_key
    if ctx.is_admin(incoming):
        role = "You are an admin here."
    else:
        role = (
            f'You are not an admin. To make you one, add "{key}" to admins in the config '
            f'(admins = ["{key}"]) or SELFTUNE_ADMINS, and restart the bot.'
        )
    name = f" ({incoming.user_name})" if incoming.user_name else ""
    return _reply(f"Your user key: {key}{name}\nThis chat: {incoming.chat_key}\n{role}")


async def new(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """A new conversation: the context starts empty; messages and ratings are kept."""
    await ctx.repo.new_conversation(incoming.chat_key)
    return _reply("Started a new conversation. Earlier messages and ratings are kept.")


async def persona(ctx: CommandContext, incoming: Incoming, args: str) -> Reply:
    """Show the chat's persona, set it, or reset it to the default system prompt."""
    repo, limit = ctx.repo, ctx.settings.chat.max_persona_chars
    if not args:
        chat = await repo.chat(incoming.chat_key)
        current = chat.persona or f"(default) {ctx.settings.chat.system_prompt}"
        return _reply(
            f"My persona here: {current}\nChange it with /persona <text>, or /persona reset."
        )
    if args.lower() in _RESETS:
        await repo.set_persona(incoming.chat_key, None)
        return _reply("Persona reset to the default.")
    if len(args) > limit:
        return Reply(
            f"That persona is {len(args)} characters; the limit is {limit}.", ReplyKind.NOTICE
        )
    await repo.set_persona(incoming.chat_key, args)
    return _reply(f"Persona set. From now on: {args}")


async def good(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """Rate the chat's last reply 👍, as a button press would."""
    return await _rate_last(ctx, incoming, Vote.UP)


async def bad(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """Rate the chat's last reply 👎, as a button press would."""
    return await _rate_last(ctx, incoming, Vote.DOWN)


async def better(ctx: CommandContext, incoming: Incoming, args: str) -> Reply:
    """Store the reply the user wanted to the bot message they answer (the console: the last
    reply) as a liked answer to that exact prompt, and the bot's reply as the worse one."""
    answer = await signals.correct(ctx.repo, ctx.settings.chat, incoming, args)
    kind = ReplyKind.COMMAND if answer == signals.THANKS else ReplyKind.NOTICE
    return Reply(answer, kind)


async def _rate_last(ctx: CommandContext, incoming: Incoming, vote: Vote) -> Reply:
    exchange_id = await ctx.repo.last_exchange_id(incoming.chat_key)
    if exchange_id is None:
        return Reply("There is no reply of mine to rate yet.", ReplyKind.NOTICE)
    outcome = await rate(ctx.repo, exchange_id, incoming.user_key, vote, chat_key=incoming.chat_key)
    return _reply(outcome.message)


async def forget(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """Delete the user's messages and ratings; adapter versions trained on them are marked."""
    report = await ctx.repo.forget_user(incoming.user_key)
    tainted = (
        f" {len(report.tainted_versions)} adapter version(s) trained on them are marked."
        if report.tainted_versions
        else ""
    )
    return _reply(
        f"Done: deleted {report.messages} messages, {report.exchanges} exchanges and "
        f"{report.ratings} ratings of yours. They will not be used for training.{tainted}"
    )


async def optout(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """Keep the user's messages and ratings out of training from now on."""
    await ctx.repo.set_training_opt_out(incoming.user_key, True)
    return _reply(
        "Done: from now on nothing you write or rate is used for training (what you "
        "already rated neither). /optin undoes it; /forget also deletes what is stored."
    )


async def optin(ctx: CommandContext, incoming: Incoming, _args: str) -> Reply:
    """Allow the user's messages and ratings in training again."""
    await ctx.repo.set_training_opt_out(incoming.user_key, False)
    return _reply("Thanks: your messages and ratings may be used for training again.")
