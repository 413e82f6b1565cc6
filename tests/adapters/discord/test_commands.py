"""Slash commands on Discord: synced at start, acknowledged within 3 s, answered by follow-ups;
admin output only for admins (by user key or by role) and only to them."""

from __future__ import annotations

from bot.app import Core
from bot.types import Vote
from tests.fakes.discord_server import (
    EPHEMERAL,
    FakeDiscord,
    FakeInteraction,
    FakeUser,
    Json,
)

USER_COMMANDS = {"help", "whoami", "new", "persona", "forget", "optout", "optin"}
ADMIN_COMMANDS = {
    "finetune",
    "status",
    "adapters",
    "rollback",
    "activate",
    "ab",
    "stats",
    "block",
    "unblock",
    "dashboard",
}


async def run(
    fake: FakeDiscord, name: str, user: FakeUser, channel_id: int | None = None, **options: str
) -> tuple[Json, FakeInteraction]:
    """Run ``/name`` and return its (single) answer, after checking it was deferred in time."""
    channel = channel_id if channel_id is not None else fake.channel_id
    record = await fake.slash(name, user, channel, **options)
    [answer] = await fake.wait_answered(record)
    assert record.callbacks[0]["type"] == 5  # deferred "thinking", then the follow-up
    assert record.acked_at is not None and record.acked_at - record.created < 3.0
    return answer, record


def private(answer: Json) -> bool:
    return bool(answer["flags"] & EPHEMERAL)


async def test_commands_are_synced_at_start(bot: Core, fake: FakeDiscord) -> None:
    by_name = {c["name"]: c for c in fake.commands}
    assert set(by_name) == USER_COMMANDS | ADMIN_COMMANDS
    assert all(0 < len(c["description"]) <= 100 for c in fake.commands)
    [persona] = by_name["persona"]["options"]
    assert (persona["name"], persona["required"]) == ("text", False)
    [version] = by_name["activate"]["options"]
    assert (version["name"], version["required"]) == ("version", True)
    assert by_name["rollback"]["options"][0]["required"] is False


async def test_help_is_public_and_lists_user_commands(bot: Core, fake: FakeDiscord) -> None:
    answer, _ = await run(fake, "help", fake.alice)
    assert not private(answer)
    assert "/persona" in answer["content"] and "/finetune" not in answer["content"]
    admin_help, _ = await run(fake, "help", fake.ada)
    assert "/finetune" in admin_help["content"]


async def test_persona_and_new_change_this_chat(bot: Core, fake: FakeDiscord) -> None:
    key = f"discord:{fake.channel_id}"
    answer, _ = await run(fake, "persona", fake.alice, text="Talk like a pirate")
    assert answer["content"].startswith("Persona set")
    assert (await bot.repo.chat(key)).persona == "Talk like a pirate"
    shown, _ = await run(fake, "persona", fake.bob)
    assert "Talk like a pirate" in shown["content"]
    before = (await bot.repo.chat(key)).conversation
    answer, _ = await run(fake, "new", fake.alice)
    assert "new conversation" in answer["content"]
    assert (await bot.repo.chat(key)).conversation == before + 1


async def test_thread_commands_apply_to_the_thread(bot: Core, fake: FakeDiscord) -> None:
    await run(fake, "persona", fake.alice, fake.thread_id, text="Be brief")
    assert (await bot.repo.chat(f"discord:{fake.channel_id}:{fake.thread_id}")).persona == (
        "Be brief"
    )
    assert (await bot.repo.chat(f"discord:{fake.channel_id}")).persona is None


async def test_forget_answers_privately(bot: Core, fake: FakeDiscord) -> None:
    await fake.user_says(fake.alice, "remember this")
    dm = fake.dm_channel(fake.alice)
    await fake.wait_for(lambda: [m for m in fake.bot_messages(dm) if m["components"]])
    answer, _ = await run(fake, "forget", fake.alice)
    assert private(answer) and "deleted 2 messages" in answer["content"]


async def test_admin_commands_refuse_others_privately(bot: Core, fake: FakeDiscord) -> None:
    for name in ("status", "finetune", "rollback"):
        answer, _ = await run(fake, name, fake.alice)
        assert private(answer)
        assert "for admins only" in answer["content"]
        assert f"discord:{fake.alice.id}" in answer["content"]


async def test_admins_by_user_key_and_by_role(bot: Core, fake: FakeDiscord) -> None:
    status, _ = await run(fake, "status", fake.ada)  # listed in `admins`
    assert private(status) and "Model: scripted" in status["content"]
    versions, _ = await run(fake, "adapters", fake.root)  # holds the admin role
    assert private(versions) and "No adapter versions yet" in versions["content"]
    rollback, _ = await run(fake, "rollback", fake.root)
    assert private(rollback) and "Nothing to roll back" in rollback["content"]
    # In a DM there are no roles: Root is an ordinary user there.
    refused, _ = await run(fake, "status", fake.root, fake.dm_channel(fake.root))
    assert "for admins only" in refused["content"]


async def test_stats_sends_the_chart_as_a_file(bot: Core, fake: FakeDiscord) -> None:
    await fake.user_says(fake.alice, "something to rate")
    dm = fake.dm_channel(fake.alice)
    [reply] = await fake.wait_for(lambda: [m for m in fake.bot_messages(dm) if m["components"]])
    exchange_id = int(fake.buttons(reply)[0][1].split(":")[1])
    await bot.service.rate(exchange_id, f"discord:{fake.alice.id}", Vote.UP)
    answer, _ = await run(fake, "stats", fake.ada)
    assert private(answer)
    assert [a["filename"] for a in answer["attachments"]] == ["ratings.png"]
    [upload] = [c for c in fake.calls if c.files]
    assert upload.files[0][1].startswith(b"\x89PNG")


async def test_an_unknown_command_is_still_answered(bot: Core, fake: FakeDiscord) -> None:
    record = await fake.slash("teleport", fake.alice, fake.channel_id)
    [answer] = await fake.wait_answered(record)
    assert private(answer) and "/teleport is not one of my commands" in answer["content"]
