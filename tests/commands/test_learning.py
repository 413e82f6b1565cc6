"""The learning loop's admin commands: /finetune from a group reports privately; /adapters lists
compactly and /adapters N shows a version in full; /ab (A/B tests), /status, /optout, /optin
(on the scripted generator)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from bot.app import Core, build_core
from bot.commands.table import BY_NAME
from bot.errors import GenerationError
from bot.generation import DEFAULT_SLOT, ScriptedGenerator
from bot.settings import Settings
from bot.types import Incoming, Reply, ReplyKind, Vote
from tests.support import records
from tests.support.records import add_version
from tests.support.trainers import trained_core

ADMIN = Incoming("console", "local", "local", "Ann", "")


async def say(core: Core, text: str, who: Incoming = ADMIN) -> Reply:
    return await records.say(core, who, text)


Sent = list[tuple[str, str]]


async def _core(settings: Settings, platform: str, sent: Sent) -> Core:
    # Private chats of many users (under the rate limit).
    core = await trained_core(settings, platform)

    async def send(chat_key: str, text: str) -> None:
        sent.append((chat_key, text))

    core.outbox.register(platform, send)
    return core


async def _finetune_in_group(core: Core, admin: Incoming) -> Reply:
    group = replace(admin, chat_id="-100", is_private=False, is_admin=True)
    started = await records.say(core, group, "/finetune")
    assert started.private and "Fine-tuning started" in started.text
    outcome = await core.finetuner.wait()
    assert outcome is not None
    for _ in range(100):  # let anything waiting on the run finish
        await asyncio.sleep(0)
    return started


async def test_finetune_in_a_group_reports_to_the_admin_privately(settings: Settings) -> None:
    sent: Sent = []
    core = await _core(settings, "telegram", sent)
    try:
        await _finetune_in_group(core, Incoming("telegram", "7", "7", "Admin", ""))
        assert sent and {key for key, _ in sent} == {"telegram:7"}  # their private chat
        assert any("Training: step" in text for _, text in sent)
        assert "passed the gate (reward margin 0.500 vs 0.300" in sent[-1][1]
    finally:
        await core.aclose()


async def test_a_platform_with_a_private_sender_gets_it(settings: Settings) -> None:
    sent: Sent = []
    core = await _core(settings, "discord", sent)
    direct: Sent = []

    async def dm(user_key: str, text: str) -> None:
        direct.append((user_key, text))

    core.outbox.register_private("discord", dm)
    try:
        await _finetune_in_group(core, Incoming("discord", "55", "7", "Admin", ""))
        assert sent == [] and {key for key, _ in direct} == {"discord:7"}
        assert "passed the gate" in direct[-1][1]
    finally:
        await core.aclose()


async def test_without_a_private_path_the_group_hears_only_that_it_ended(
    settings: Settings,
) -> None:
    sent: Sent = []
    core = await _core(settings, "discord", sent)
    try:
        await _finetune_in_group(core, Incoming("discord", "55", "7", "Admin", ""))
        assert sent == [
            (
                "discord:-100",
                "Training run #1 ended (succeeded). Details for admins: /status, /adapters.",
            )
        ]
    finally:
        await core.aclose()


async def test_adapters_lists_compactly_and_shows_one_version_in_full(settings: Settings) -> None:
    sent: Sent = []
    core = await _core(settings, "telegram", sent)
    admin = Incoming("telegram", "7", "7", "Admin", "", is_admin=True)
    try:
        await _finetune_in_group(core, admin)
        listed = await records.say(core, admin, "/adapters")
        first = listed.text.splitlines()[0]
        assert first.startswith("▶ v1 [active]") and "KTO on" in first
        assert "reward margin 0.5 (serving 0.3)" in first and "gate: pass" in first
        assert "pref. acc." not in first  # only the deciding metric in the list
        assert "/adapters N" in listed.text and BY_NAME["adapters"].args == "[N]"

        shown = await records.say(core, admin, "/adapters 1")
        text = shown.text
        assert shown.private and text.startswith("Adapter v1 [active] ▶ serving")
        for expected in (
            "Parent: base model",
            "Created: ",
            "; the run took ",
            "Tainted: no",
            "Method: KTO",
            "LoRA: r 16, alpha 32, dropout 0,",
            "learning_rate 0.001",
            "epochs 2",
            "beta ",
            "max_length 512",
            "Gate: pass — reward margin 0.500 vs 0.300",
            "Gate settings: margin 0.02, min_heldout 4",
            "Held-out metrics (candidate / serving when trained / base):",
            "  reward margin: 0.5 / 0.3 / 0 ◀ decides",
            "  pref. acc.: 0.8 / 0.8 / 0.6",
            "  liked NLL: 2 / 2 / 2.1",
            "Training numbers: train_loss 1.5, steps 2",
        ):
            assert expected in text, expected
        version = await core.repo.adapters.get(1)
        assert version is not None
        ids = sorted(version.exchange_ids)
        listed_ids = ", ".join(map(str, ids[:10]))
        assert f"Exchanges: {len(ids)} (ids {listed_ids}, …)" in text

        base = await records.say(core, admin, "/adapters 0")
        assert "base model" in base.text
        missing = await records.say(core, admin, "/adapters 9")
        assert missing.kind is ReplyKind.NOTICE and "no adapter v9" in missing.text
        wrong = await records.say(core, admin, "/adapters x")
        assert "Usage: /adapters [N]" in wrong.text
    finally:
        await core.aclose()


async def test_the_detail_view_shows_a_rejected_tainted_version(core: Core, tmp_path: Path) -> None:
    await core.repo.adapters.add(
        version=1,
        path=str(tmp_path),
        parent=None,
        base_model="scripted",
        exchange_ids=[3, 1, 2],
        metrics={"liked_nll": 3.0, "serving.liked_nll": 2.0},
        hyperparams={
            "method": "sft",
            "gate": {"verdict": "fail", "reason": "liked NLL worse", "metric": "liked_nll"},
        },
        duration_s=None,
        training_run_id=None,
        tainted=True,
    )
    admin = Incoming("console", "local", "local", "Ann", "")
    listed = await records.say(core, admin, "/adapters")
    assert "liked NLL 3 (serving 2)" in listed.text and "gate: fail" in listed.text
    shown = await records.say(core, admin, "/adapters v1")
    assert "Gate: fail — liked NLL worse" in shown.text
    assert "  liked NLL: 3 / 2 / – ◀ decides" in shown.text
    assert "Exchanges: 3 (ids 1, 2, 3)" in shown.text and "Method: SFT" in shown.text
    assert "Tainted: yes" in shown.text and "the run took" not in shown.text


async def _two_versions(core: Core, tmp_path: Path) -> None:
    """v1 (live) and v2 (ready): adapter folders the scripted generator can 'serve'."""
    for version in (1, 2):
        path = tmp_path / f"v{version}"
        path.mkdir()
        await add_version(
            core.repo, path, version=version, parent=version - 1 or None, duration_s=1.0
        )
    await core.versions.activate(1)


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

    async def swap_lora(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        if slot != DEFAULT_SLOT:
            raise GenerationError(f"adapter slot {slot!r} is not available in this engine yet")
        await super().swap_lora(path, slot=slot)


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
