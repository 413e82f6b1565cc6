"""/block, /unblock and /dashboard: admin commands, audited, private."""

from __future__ import annotations

from dataclasses import replace

from bot.app import Core, build_core
from bot.chat.access import BLOCKED
from bot.commands.access import DASHBOARD_OFF
from bot.generation import ScriptedGenerator
from bot.settings import AccessSettings, Settings
from bot.types import Incoming, ReplyKind
from tests.support.records import say

ADMIN = Incoming("console", "local", "local", "Admin", "")
EVE = Incoming("telegram", "66", "66", "Eve", "")


async def test_block_and_unblock_are_audited_and_take_effect_at_once(core: Core) -> None:
    blocked = await say(core, ADMIN, "/block telegram:66")
    assert blocked.private and "Blocked telegram:66" in blocked.text
    assert await core.repo.curation.is_blocked("telegram:66")
    assert (await say(core, EVE, "hi")).text == BLOCKED
    assert not core.service.should_answer(replace(EVE, text="hi"))

    unblocked = await say(core, ADMIN, "/unblock telegram:66")
    assert unblocked.text == "Unblocked telegram:66."
    assert core.service.should_answer(replace(EVE, text="hi"))
    assert (await say(core, EVE, "hi")).kind is ReplyKind.ANSWER
    audit = await core.repo.curation.audit(10, action="user.")
    assert [(a.action, a.actor, a.target) for a in audit] == [
        ("user.unblock", "console:local", "user:telegram:66"),
        ("user.block", "console:local", "user:telegram:66"),
    ]


async def test_block_refuses_bad_keys_admins_and_non_admins(core: Core) -> None:
    for text in ("/block", "/block eve", "/block telegram:"):
        reply = await say(core, ADMIN, text)
        assert reply.kind is ReplyKind.NOTICE and "Usage: /block USER_KEY" in reply.text
    assert "is an admin" in (await say(core, ADMIN, "/block console:local")).text
    assert "for admins only" in (await say(core, EVE, "/block telegram:1")).text
    assert await core.repo.curation.controls() == {}


async def test_unblock_says_when_the_configuration_still_blocks(settings: Settings) -> None:
    configured = settings.model_copy(update={"access": AccessSettings(block_users=["telegram:66"])})
    core = await build_core(configured, generator=ScriptedGenerator(), progress=False)
    try:
        reply = await say(core, ADMIN, "/unblock telegram:66")
        assert "still blocked by `access.block_users`" in reply.text
        assert (await say(core, EVE, "hi")).text == BLOCKED
    finally:
        await core.aclose()


async def test_dashboard_off_says_how_to_turn_it_on(core: Core) -> None:
    reply = await say(core, ADMIN, "/dashboard")
    assert reply.private and reply.text == DASHBOARD_OFF


async def test_dashboard_sends_a_one_time_login_link(settings: Settings) -> None:
    web = settings.web.model_copy(update={"enabled": True, "port": 18765})
    core = await build_core(
        settings.model_copy(update={"web": web}), generator=ScriptedGenerator(), progress=False
    )
    try:
        reply = await say(core, ADMIN, "/dashboard")
        assert reply.private and "http://127.0.0.1:18765/login/link?t=" in reply.text
        assert "works once, for 10 min" in reply.text
        vouched = replace(EVE, is_admin=True)  # a Discord admin role, not in `admins`
        refused = await say(core, vouched, "/dashboard")
        assert refused.kind is ReplyKind.NOTICE and "add telegram:66 there" in refused.text
    finally:
        await core.aclose()
