"""/finetune from a group reports privately; /adapters lists compactly and /adapters N shows a
version in full."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from bot.app import Core
from bot.commands.table import BY_NAME
from bot.settings import Settings
from bot.types import Incoming, Reply, ReplyKind
from tests.support.records import say
from tests.support.trainers import trained_core

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
    started = await say(core, group, "/finetune")
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
        listed = await say(core, admin, "/adapters")
        first = listed.text.splitlines()[0]
        assert first.startswith("▶ v1 [active]") and "KTO on" in first
        assert "reward margin 0.5 (serving 0.3)" in first and "gate: pass" in first
        assert "pref. acc." not in first  # only the deciding metric in the list
        assert "/adapters N" in listed.text and BY_NAME["adapters"].args == "[N]"

        shown = await say(core, admin, "/adapters 1")
        text = shown.text
        assert shown.private and text.startswith("Adapter v1 [active] ▶ serving")
        for expected in (
            "Parent: base model",
            "Created: ",
            "training took ",
            "Tainted: no",
            "Method: KTO",
            "LoRA: r 8, alpha 16, dropout 0.05",
            "learning_rate 0.0002",
            "epochs 2",
            "beta ",
            "max_length 512",
            "Gate: pass — reward margin 0.500 vs 0.300",
            "Gate settings: margin 0.02, min_heldout 4",
            "Held-out metrics (candidate / serving when trained / base):",
            "  reward margin: 0.5 / 0.3 / 0.3 ◀ decides",
            "  pref. acc.: 0.8 / 0.8 / 0.8",
            "  liked NLL: 2 / 2 / 2",
            "Training numbers: train_loss 1.5, steps 2",
        ):
            assert expected in text, expected
        version = await core.repo.adapters.get(1)
        assert version is not None
        ids = sorted(version.exchange_ids)
        listed_ids = ", ".join(map(str, ids[:10]))
        assert f"Exchanges: {len(ids)} (ids {listed_ids}, …)" in text

        base = await say(core, admin, "/adapters 0")
        assert "base model" in base.text
        missing = await say(core, admin, "/adapters 9")
        assert missing.kind is ReplyKind.NOTICE and "no adapter v9" in missing.text
        wrong = await say(core, admin, "/adapters x")
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
    listed = await say(core, admin, "/adapters")
    assert "liked NLL 3 (serving 2)" in listed.text and "gate: fail" in listed.text
    shown = await say(core, admin, "/adapters v1")
    assert "Gate: fail — liked NLL worse" in shown.text
    assert "  liked NLL: 3 / 2 / – ◀ decides" in shown.text
    assert "Exchanges: 3 (ids 1, 2, 3)" in shown.text and "Method: SFT" in shown.text
    assert "Tainted: yes" in shown.text and "training took" not in shown.text
