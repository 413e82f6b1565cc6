"""The learning loop's commands on the scripted generator: /ab (A/B tests), /status, /optout,
/optin, and the command table the platforms register."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot.app import Core, build_core
from bot.commands.table import BY_NAME, help_text
from bot.errors import GenerationError
from bot.generation import DEFAULT_SLOT, ScriptedGenerator
from bot.settings import Settings
from bot.types import Incoming, Reply, ReplyKind, Vote
from tests.support import records
from tests.support.records import add_version

ADMIN = Incoming("console", "local", "local", "Ann", "")


async def say(core: Core, text: str, who: Incoming = ADMIN) -> Reply:
    return await records.say(core, who, text)


async def _two_versions(core: Core, tmp_path: Path) -> None:
    """v1 (live) and v2 (ready): adapter folders the scripted generator can 'serve'."""
    for version in (1, 2):
        path = tmp_path / f"v{version}"
        path.mkdir()
        await add_version(
            core.repo, path, version=version, parent=version - 1 or None, duration_s=1.0
        )
    await core.versions.activate(1)


def test_the_new_commands_are_in_the_table() -> None:
    assert not BY_NAME["optout"].admin and not BY_NAME["optin"].admin
    assert BY_NAME["ab"].admin and BY_NAME["ab"].args.startswith("[")
    assert "/optout" in help_text(False) and "/ab" not in help_text(False)
    assert all(len(spec.help) <= 100 and len(spec.arg_help) <= 100 for spec in BY_NAME.values())


async def test_ab_test_routes_chats_records_versions_and_compares(
    core: Core, scripted: ScriptedGenerator, tmp_path: Path
) -> None:
    await _two_versions(core, tmp_path)
    started = await say(core, "/ab start 2 50%")
    assert "A/B test #1 started: v2 serves 50% of chats" in started.text and started.private
    assert core.versions.candidate == 2
    by_version: dict[int | None, int] = {}
    for i in range(40):
        user = replace(ADMIN, chat_id=f"chat{i}", user_id=f"user{i}")
        reply = await say(core, "hello", user)
        again = await say(core, "hello again", user)
        assert again.adapter_version == reply.adapter_version  # a chat keeps its adapter
        assert f"[v{reply.adapter_version}]" in reply.text  # and the reply says who wrote it
        by_version[reply.adapter_version] = by_version.get(reply.adapter_version, 0) + 1
        assert reply.exchange_id is not None
        exchange = await core.repo.exchange(reply.exchange_id)
        assert exchange is not None and exchange.adapter_version == reply.adapter_version
        # Users like v2's replies and not v1's.
        vote = Vote.UP if reply.adapter_version == 2 else Vote.DOWN
        await core.service.rate(reply.exchange_id, user.user_key, vote)
    assert set(by_version) == {1, 2} and min(by_version.values()) >= 10
    status = await say(core, "/ab")
    assert "v2 serves 50% of chats" in status.text and "p = " in status.text
    assert "significant at 0.05" in status.text and "not significant" not in status.text
    assert "A/B test #1" in (await say(core, "/status")).text
    promoted = await say(core, "/ab promote")
    assert "Promoted: v2 now serves every chat" in promoted.text
    assert core.versions.current == 2 and core.versions.candidate is None
    assert (await say(core, "/ab")).text == "No A/B test is running."
    tests = await core.repo.ab.history()
    assert tests[0].status == "promoted" and "👍" in tests[0].message


async def test_retiring_a_candidate(core: Core, tmp_path: Path) -> None:
    await _two_versions(core, tmp_path)
    await say(core, "/ab start 2 0.3")
    retired = await say(core, "/ab retire")
    assert "Retired: v2 serves no chat any more" in retired.text
    version = await core.repo.adapters.get(2)
    assert version is not None and version.status == "retired"
    assert core.versions.current == 1 and core.versions.candidate is None
    assert "No A/B test is running" in (await say(core, "/ab promote")).text


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("/ab start 1 0.2", "already serves every chat"),
        ("/ab start 9", "no adapter v9"),
        ("/ab start 2 150%", "between 0 and 1"),
        ("/ab start 0", "base model cannot be an A/B candidate"),
        ("/ab frobnicate", "Usage: /ab"),
    ],
)
async def test_ab_mistakes_get_clear_answers(
    core: Core, tmp_path: Path, command: str, answer: str
) -> None:
    await _two_versions(core, tmp_path)
    reply = await say(core, command)
    assert reply.kind is ReplyKind.NOTICE and answer.lower() in reply.text.lower()


class OneSlotGenerator(ScriptedGenerator):
    """An engine without a second adapter slot (like the transformers engine before issue 6)."""

    async def swap_adapter(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        if slot != DEFAULT_SLOT:
            raise GenerationError(f"adapter slot {slot!r} is not available in this engine yet")
        await super().swap_adapter(path, slot=slot)


async def test_an_engine_without_a_second_slot_refuses_ab_clearly(
    settings: Settings, tmp_path: Path
) -> None:
    core = await build_core(settings, generator=OneSlotGenerator(), progress=False)
    try:
        await _two_versions(core, tmp_path)
        reply = await say(core, "/ab start 2 0.5")
        assert "cannot serve it next to the live one" in reply.text
        assert await core.repo.ab.running() is None
        # A test recorded elsewhere (another process) must not break serving here.
        await core.repo.ab.start(2, 1, 0.99, "cli")
        answer = await say(core, "hello", replace(ADMIN, chat_id="x", user_id="x"))
        assert answer.rateable and answer.adapter_version == 1
    finally:
        await core.aclose()


async def test_optout_and_optin(core: Core, scripted: ScriptedGenerator) -> None:
    reply = await say(core, "hi")
    assert reply.exchange_id is not None
    await core.service.rate(reply.exchange_id, ADMIN.user_key, Vote.UP)
    assert len(await core.repo.training.rated()) == 1
    out = await say(core, "/optout")
    assert "nothing you write or rate is used for training" in out.text and out.private
    assert await core.repo.training.rated() == []
    back = await say(core, "/optin")
    assert "may be used for training again" in back.text
    assert len(await core.repo.training.rated()) == 1
