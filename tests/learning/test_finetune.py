"""Fine-tuning orchestration: data, lock, gate, registration, activation, failure, interruption.

The trainer here (tests/trainers.py) is a stand-in that writes an adapter folder and reports the
numbers the real one would; the real subprocess trainer and the tiny model run in
tests/e2e/test_loop.py and tests/learning/test_gate.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.app import Core
from bot.errors import NothingToTrain, TrainingAlreadyRunning
from bot.learning.finetune import FinetuneOutcome, choose_method
from bot.learning.protocol import Done, Event, Phase, Start, Step, TrainingSpec, TrainResult
from bot.settings import Settings
from bot.settings.learning import GENERAL_PROMPTS
from bot.types import AdapterStatus, AdapterVersion, Incoming, RunStatus, Vote
from tests.support.records import rated, say
from tests.support.trainers import GOOD, FakeTrainer, trainer_core

ME = Incoming("console", "local", "local", "Ann", "")
BAD = {"preference_accuracy": 0.3, "liked_nll": 3.0, "reward_margin": -0.2}


def _settings(settings: Settings, **gate: Any) -> Settings:
    return settings.model_copy(update={"gate": settings.gate.model_copy(update=gate)})


async def _rated(core: Core, text: str, vote: Vote = Vote.UP, who: Incoming = ME) -> int:
    return await rated(core, who, text, vote)


def _recorder() -> tuple[list[str], Any]:
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    return notes, notify


def _assert_first_spec_and_data(
    trainer: FakeTrainer, settings: Settings, liked: int, disliked: int
) -> None:
    # What the first run handed the trainer, and the report it left (without users' words).
    spec = trainer.specs[0]
    assert spec.model_dir == Path("/m") and spec.lora.r == settings.lora.r
    assert spec.method == "sft" and spec.serving_lora is None
    # The gate's look at the replies samples as users are served (bot.trainer.visible).
    assert spec.samples is not None
    assert (spec.samples.prompts, spec.samples.per_prompt) == (16, 3)
    assert spec.samples.params == settings.generation.params()  # as users are served
    system = {"role": "system", "content": settings.chat.system_prompt}
    asked = [[system, {"role": "user", "content": text}] for text in GENERAL_PROMPTS]
    assert spec.samples.general == asked
    rows = trainer.datasets[0]
    assert {r["exchange_id"]: r["label"] for r in rows} == {liked: True, disliked: False}
    assert all(r["split"] == "train" for r in rows)
    assert not spec.dataset.exists()  # users' words are not left lying around
    report_file = spec.dataset.parent / "report.json"
    report = json.loads(report_file.read_text())
    assert report["data"]["train"] == {"liked": 1, "disliked": 1}
    assert report["gate"]["verdict"] == "undecided" and "good one" not in report_file.read_text()


async def _assert_a_second_run_is_a_child(
    core: Core, trainer: FakeTrainer, notify: Any, first_path: Path
) -> None:
    # A run while v1 serves: the new version's parent is v1, trained on top of v1's LoRA.
    await _rated(core, "more")
    await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
    second = await core.finetuner.wait()
    assert second is not None and second.version == 2
    child = await core.repo.adapters.get(2)
    assert child is not None and child.parent == 1
    assert trainer.specs[1].serving_lora == first_path
    assert trainer.specs[1].serving_version == 1


async def test_a_run_registers_a_version_with_its_lineage(settings: Settings) -> None:
    trainer = FakeTrainer()
    core = await trainer_core(_settings(settings, when_undecided="activate"), trainer)
    notes, notify = _recorder()
    try:
        liked = await _rated(core, "good one")
        disliked = await _rated(core, "bad one", Vote.DOWN)
        started = await core.finetuner.start(
            trigger="command", requested_by="console:local", notify=notify
        )
        assert "run #1, SFT" in started
        # SFT learns from the 👍 only: the 👎 is said to be unused, not counted as trained on.
        assert "training on 1 👍 (SFT imitates 👍 only: 1 👎 unused)" in started
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
        assert outcome.version == 1 and core.versions.current == 1
        version = await core.repo.adapters.get(1)
        assert version is not None and version.status is AdapterStatus.ACTIVE
        assert set(version.exchange_ids) == {liked}  # what SFT trained on
        assert disliked not in version.exchange_ids
        assert version.parent is None and version.metrics["train_loss"] == 1.5
        assert version.hyperparams["method"] == "sft"
        gate = version.hyperparams["gate"]
        assert isinstance(gate, dict) and gate["verdict"] == "undecided"  # (too few held out)
        _assert_first_spec_and_data(trainer, settings, liked, disliked)
        assert any("step 2/2 (100%), loss 1.500" in n for n in notes)
        assert "adapter v1 is live" in notes[-1].lower()
        reply = await say(core, ME, "again")
        assert "[v0001]" in reply.text
        assert reply.adapter_version == 1
        await _assert_a_second_run_is_a_child(core, trainer, notify, Path(version.path))
    finally:
        await core.aclose()


async def test_undecided_keeps_the_candidate_ready_by_default(settings: Settings) -> None:
    core = await trainer_core(settings, FakeTrainer())
    notes, notify = _recorder()
    try:
        await _rated(core, "x")
        outcome = await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert outcome.status is RunStatus.SUCCEEDED and core.versions.current is None
        version = await core.repo.adapters.get(1)
        assert version is not None and version.status is AdapterStatus.READY
        assert "ready but not serving" in notes[-1] and "/activate 1" in notes[-1]
    finally:
        await core.aclose()


async def _many_ratings(core: Core, count: int = 40) -> None:
    for i in range(count):
        who = replace(ME, chat_id=f"chat{i}", user_id=f"user{i}")  # under the rate limit
        await _rated(core, f"message {i}", Vote.UP if i % 2 else Vote.DOWN, who)


async def test_the_gate_lets_a_better_candidate_go_live(settings: Settings) -> None:
    trainer = FakeTrainer(candidate=GOOD | {"reward_margin": 0.29, "preference_accuracy": 0.5})
    core = await trainer_core(_settings(settings, min_heldout=4), trainer)
    notes, notify = _recorder()
    try:
        await _many_ratings(core)
        outcome = await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert outcome.status is RunStatus.SUCCEEDED and core.versions.current == 1
        assert outcome.decision is not None and outcome.decision.verdict == "pass"
        assert "passed the gate (reward margin 0.290 vs 0.300" in notes[-1]
        heldout = [r for r in trainer.datasets[0] if r["split"] == "heldout"]
        assert len(heldout) >= 4
        assert trainer.specs[0].method == "kto"  # 20 👎: enough for KTO under auto
        version = await core.repo.adapters.get(1)
        assert version is not None
        assert version.metrics["reward_margin"] == 0.29
        assert version.metrics["serving.reward_margin"] == 0.3
        assert not {i for r in heldout for i in r["exchange_ids"]} & set(version.exchange_ids)
    finally:
        await core.aclose()


async def test_the_gate_rejects_a_worse_candidate_and_says_why(settings: Settings) -> None:
    core = await trainer_core(_settings(settings, min_heldout=4), FakeTrainer(candidate=BAD))
    notes, notify = _recorder()
    try:
        await _many_ratings(core)
        outcome = await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert outcome.status is RunStatus.REJECTED and core.versions.current is None
        assert "rejected by the gate" in notes[-1]
        assert "reward margin -0.200 vs 0.300" in notes[-1]
        assert "worse by 0.500 > margin 0.02" in notes[-1]
        version = await core.repo.adapters.get(1)
        assert version is not None and version.status is AdapterStatus.REJECTED
        assert version.metrics["preference_accuracy"] == 0.3  # kept with its numbers
        runs = await core.repo.runs.recent()
        assert runs[0].status is RunStatus.REJECTED and runs[0].adapter_version == 1
        reply = await say(core, ME, "/adapters")
        assert "v1 [rejected]" in reply.text
        assert "gate: fail" in reply.text
    finally:
        await core.aclose()


async def test_a_candidate_that_passes_can_go_to_an_ab_test(settings: Settings) -> None:
    settings = _settings(settings, min_heldout=4).model_copy(
        update={"ab": settings.ab.model_copy(update={"share": 0.5})}
    )
    core = await trainer_core(settings, FakeTrainer(candidate=GOOD))
    notes, notify = _recorder()
    try:
        await _many_ratings(core)
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert core.versions.current is None and core.versions.candidate == 1
        assert "A/B test #1 started: v1 serves 50% of chats" in notes[-1]
    finally:
        await core.aclose()


def test_method_choice() -> None:
    assert choose_method("auto", 9, 10) == "sft"
    assert choose_method("auto", 10, 10) == "kto"
    assert choose_method("kto", 0, 10) == "kto"
    assert choose_method("sft", 50, 10) == "sft"


async def test_nothing_to_train_and_no_overlap(settings: Settings) -> None:
    hold = asyncio.Event()
    core = await trainer_core(settings, FakeTrainer(hold=hold))
    notify = core.outbox.notifier("console:local")
    try:
        with pytest.raises(NothingToTrain, match="0 liked replies"):
            await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        await _rated(core, "x")
        await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        with pytest.raises(TrainingAlreadyRunning):
            await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        # Chat stays usable while training runs.
        assert (await say(core, ME, "still there?")).rateable
        hold.set()
        await core.finetuner.wait()
    finally:
        await core.aclose()


async def test_finetune_while_the_last_run_still_reports(settings: Settings) -> None:
    """The run's row is finished but its task still sends the last message: /finetune then
    waits for that message and starts the next run (it used to fail an assert)."""
    core = await trainer_core(settings, FakeTrainer())
    reporting, release = asyncio.Event(), asyncio.Event()
    notes: list[str] = []

    async def slow_notify(text: str) -> None:
        if "ready but not serving" in text:
            reporting.set()
            await release.wait()
        notes.append(text)

    try:
        await _rated(core, "x")
        await core.finetuner.start(trigger="command", requested_by=None, notify=slow_notify)
        await asyncio.wait_for(reporting.wait(), 5)
        assert await core.repo.runs.running() is None  # the row is finished, the task is not
        await _rated(core, "y")  # something new to train on
        second = asyncio.create_task(
            core.finetuner.start(trigger="command", requested_by=None, notify=slow_notify)
        )
        await asyncio.sleep(0.05)
        release.set()
        assert "Fine-tuning started (run #2" in await asyncio.wait_for(second, 5)
        outcome = await asyncio.wait_for(core.finetuner.wait(), 5)
        assert outcome is not None and outcome.run_id == 2
        ready = [n.split()[1] for n in notes if "ready but not serving" in n]
        assert ready == ["v1", "v2"]  # the first run's last word came first
    finally:
        await core.aclose()


async def test_a_failed_run_activates_nothing(settings: Settings) -> None:
    core = await trainer_core(settings, FakeTrainer(fail="CUDA exploded"))
    notes, notify = _recorder()
    try:
        await _rated(core, "x")
        await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.FAILED
        assert "CUDA exploded" in notes[-1] and "Nothing changed" in notes[-1]
        assert await core.repo.adapters.all() == []
        assert core.versions.current is None
        assert not list(settings.adapters_dir.glob("*.partial"))
        runs = await core.repo.runs.recent()
        assert runs[0].status is RunStatus.FAILED
    finally:
        await core.aclose()


async def test_stopping_mid_run_leaves_nothing_partial(settings: Settings) -> None:
    core = await trainer_core(settings, FakeTrainer(hold=asyncio.Event()))
    try:
        await _rated(core, "x")
        await core.finetuner.start(
            trigger="command", requested_by=None, notify=core.outbox.notifier("console:local")
        )
        await asyncio.sleep(0.05)
        await core.finetuner.cancel()
        runs = await core.repo.runs.recent()
        assert runs[0].status is RunStatus.INTERRUPTED
        assert await core.repo.adapters.all() == []
        assert not any(settings.adapters_dir.iterdir())
    finally:
        await core.aclose()


async def test_an_orphaned_adapter_folder_does_not_block_training(settings: Settings) -> None:
    core = await trainer_core(_settings(settings, when_undecided="activate"), FakeTrainer())
    try:
        orphan = settings.adapters_dir / "v0001"  # a trainer finished after its server died
        orphan.mkdir(parents=True)
        await _rated(core, "x")
        outcome = await core.finetuner.run(
            trigger="cli", requested_by=None, notify=core.outbox.notifier("console:local")
        )
        assert outcome.status is RunStatus.SUCCEEDED and outcome.version == 1
    finally:
        await core.aclose()


async def _forget_while_training(
    core: Core, hold: asyncio.Event, user_key: str
) -> tuple[FinetuneOutcome | None, AdapterVersion | None]:
    """Start a run whose trainer waits for ``hold``, let ``user_key`` /forget while it trains,
    then let it finish: how it ended, and version 1 (what it registered)."""
    await core.finetuner.start(
        trigger="command", requested_by=None, notify=core.outbox.notifier("console:local")
    )
    await asyncio.sleep(0.05)
    await core.repo.forget_user(user_key)
    hold.set()
    outcome = await core.finetuner.wait()
    return outcome, await core.repo.adapters.get(1)


async def test_a_forget_during_the_run_taints_the_new_version(settings: Settings) -> None:
    hold = asyncio.Event()
    core = await trainer_core(settings, FakeTrainer(hold=hold))
    other = replace(ME, chat_id="bob", user_id="bob", user_name="Bob")
    try:
        await _rated(core, "x")
        await _rated(core, "mine", who=other)
        _, version = await _forget_while_training(core, hold, other.user_key)
        assert version is not None and version.tainted
    finally:
        await core.aclose()


async def test_a_forget_of_a_rater_during_the_run_taints_the_new_version(
    settings: Settings,
) -> None:
    """Bob only rated Ann's reply: his /forget deletes the rating, not the exchange, and the
    version trained on his rating is still marked."""
    hold = asyncio.Event()
    core = await trainer_core(settings, FakeTrainer(hold=hold))
    bob = replace(ME, user_id="bob", user_name="Bob")
    try:
        exchange = await _rated(core, "x")
        await core.service.rate(exchange, bob.user_key, Vote.UP)
        outcome, version = await _forget_while_training(core, hold, bob.user_key)
        assert await core.repo.exchange(exchange) is not None  # Ann's exchange stays
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
        assert version is not None and version.tainted
        runs = await core.repo.runs.recent()
        assert runs[0].adapter_version == 1
    finally:
        await core.aclose()


async def test_a_forget_of_someone_else_does_not_taint(settings: Settings) -> None:
    hold = asyncio.Event()
    core = await trainer_core(settings, FakeTrainer(hold=hold))
    carl = replace(ME, chat_id="carl", user_id="carl", user_name="Carl")
    try:
        await _rated(core, "x")
        await say(core, carl, "hello")
        # Carl never rated anything trained on.
        _, version = await _forget_while_training(core, hold, carl.user_key)
        assert version is not None and not version.tainted
    finally:
        await core.aclose()


async def test_an_admin_change_during_the_run_is_not_undone(settings: Settings) -> None:
    """v2 is judged against v1; a /rollback to the base while it trains wins: v2 is kept ready
    (not live), its parent is v1 (what it was trained from and judged against), and the admin
    is told why."""
    hold = asyncio.Event()
    trainer = FakeTrainer()
    core = await trainer_core(_settings(settings, when_undecided="activate"), trainer)
    notes, notify = _recorder()
    try:
        await _rated(core, "x")
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert core.versions.current == 1
        await _rated(core, "y")  # something new to train on
        trainer.hold = hold
        await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        await asyncio.sleep(0.05)
        await say(core, ME, "/rollback")
        assert core.versions.current is None
        hold.set()
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
        assert core.versions.current is None and await core.repo.adapters.active() is None
        await _assert_kept_ready_beside_the_rollback(core, trainer, notes[-1])
    finally:
        await core.aclose()


async def _assert_kept_ready_beside_the_rollback(
    core: Core, trainer: FakeTrainer, note: str
) -> None:
    """v2 is ready, not live; its parent is v1; the admin's note and the report say why."""
    version = await core.repo.adapters.get(2)
    assert version is not None and version.status is AdapterStatus.READY
    assert version.parent == 1
    assert trainer.specs[1].serving_version == 1
    assert "v2 is ready but not serving" in note
    assert "judged against adapter v1" in note and "the base model" in note
    assert "/activate 2" in note
    report = json.loads((trainer.specs[1].dataset.parent / "report.json").read_text())
    assert report["compared_with"] == 1 and report["active_at_release"] is None


async def test_an_activation_during_the_run_sets_the_parent(settings: Settings) -> None:
    """The parent is the version the run started from, not the one serving at release."""
    hold = asyncio.Event()
    trainer = FakeTrainer()
    core = await trainer_core(_settings(settings, when_undecided="activate"), trainer)
    notes, notify = _recorder()
    try:
        await _rated(core, "x")
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        await core.versions.activate(None)
        await _rated(core, "y")  # something new to train on
        trainer.hold = hold
        await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        await asyncio.sleep(0.05)
        await core.versions.activate(1)
        hold.set()
        await core.finetuner.wait()
        version = await core.repo.adapters.get(2)
        assert version is not None and version.parent is None
        assert version.status is AdapterStatus.READY and core.versions.current == 1
        assert "judged against the base model (no adapter)" in notes[-1]
    finally:
        await core.aclose()


async def test_rollback_and_activate(settings: Settings) -> None:
    core = await trainer_core(_settings(settings, when_undecided="activate"), FakeTrainer())
    try:
        for text in ("x", "y"):
            await _rated(core, text)  # each run has something new to train on
            await core.finetuner.run(
                trigger="cli", requested_by=None, notify=core.outbox.notifier("console:local")
            )
        assert core.versions.current == 2
        assert "adapter v1" in (await say(core, ME, "/rollback")).text
        assert core.versions.current == 1
        assert "base model" in (await say(core, ME, "/rollback")).text
        await say(core, ME, "/activate 2")
        assert core.versions.current == 2
        listed = await say(core, ME, "/adapters")
        assert "▶ v2 [active]" in listed.text and "parent v1" in listed.text
        await say(core, ME, "/rollback 0")
        assert core.versions.current is None
    finally:
        await core.aclose()


async def test_progress_reaches_the_admin_sparingly() -> None:
    from bot.learning.progress import reporter

    class Owner:
        def __init__(self) -> None:
            self.progress: Event | None = None

    notes, notify = _recorder()
    events: list[Event] = []

    async def on_event(event: Event) -> None:
        events.append(event)

    owner = Owner()
    report = reporter(owner, notify, on_event, 7)
    await report(Start("kto", examples=100, total_steps=100))
    await report(Phase("reference", examples=100))
    for step in range(1, 101):
        await report(Step(step, 100, loss=1.0))
    await report(Phase("evaluation", heldout=12))
    assert notes[0] == (
        "Training run #7: scoring the 100 examples under the base model (KTO's reference)…"
    )
    steps = [n for n in notes if n.startswith("Training: step")]
    assert [s.split()[2] for s in steps] == ["1/100", "26/100", "51/100", "76/100", "100/100"]
    assert notes[-1].endswith("scoring the new adapter on 12 held-out ratings…")
    assert len(events) == 103 and owner.progress == Phase("evaluation", heldout=12)


FAKE_TRAINER_MODULE = """
import json, sys
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
Path(spec["output_dir"]).mkdir(parents=True)
filler = "x" * 300_000
print("a log line that is not an event", flush=True)
print(json.dumps({"event": "start", "method": "sft", "examples": 1, "total_steps": 1}))
print(json.dumps({"event": "done", "metrics": {"steps": 1}, "data": {"note": filler}}))
"""


async def test_a_long_done_line_keeps_the_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``done`` event longer than asyncio's 64 KiB line limit still arrives."""
    from bot.learning.trainer_process import SubprocessTrainer

    (tmp_path / "long_done_trainer.py").write_text(FAKE_TRAINER_MODULE, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    spec = TrainingSpec(Path("/m"), tmp_path / "rows.jsonl", tmp_path / "v0001")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json(), encoding="utf-8")
    events: list[Event] = []

    async def progress(event: Event) -> None:
        events.append(event)

    trainer = SubprocessTrainer(module="long_done_trainer")
    result = await asyncio.wait_for(trainer.run(spec, spec_path, progress), 30)
    assert result.output_dir == tmp_path / "v0001" and result.metrics == {"steps": 1}
    assert len(result.data["note"]) == 300_000
    assert [type(e) for e in events] == [Start, Done]


MALFORMED_TRAINER_MODULE = """
import json, sys, time
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
Path(spec["output_dir"]).mkdir(parents=True)
print(json.dumps({"event": "step", "step": "one", "total_steps": 2, "loss": 1.0}), flush=True)
time.sleep(30)  # the parent must not wait for it
"""


async def test_a_malformed_event_fails_the_run_and_stops_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.errors import TrainingFailed
    from bot.learning.trainer_process import SubprocessTrainer

    (tmp_path / "malformed_trainer.py").write_text(MALFORMED_TRAINER_MODULE, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    spec = TrainingSpec(Path("/m"), tmp_path / "rows.jsonl", tmp_path / "v0001")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json(), encoding="utf-8")

    async def progress(event: Event) -> None:
        raise AssertionError(f"no event should get through: {event}")

    trainer = SubprocessTrainer(module="malformed_trainer")
    with pytest.raises(TrainingFailed, match=r"malformed event.*'step'"):
        await asyncio.wait_for(trainer.run(spec, spec_path, progress), 20)
    assert trainer.pid is None


def test_the_done_event_counts_dropped_rows_per_reason() -> None:
    from bot.trainer.examples import Dropped
    from bot.trainer.inputs import DROPPED_SAMPLE, Prepared, data_report

    dropped = [Dropped(i, f"reply longer than max_length ({i} tokens)") for i in range(30)]
    dropped += [Dropped(100 + i, "the reply renders to no tokens") for i in range(50_000)]
    spec = TrainingSpec(model_dir=Path("/m"), dataset=Path("/d"), output_dir=Path("/o"))
    report = data_report(spec, Prepared([], [], [], dropped))
    assert report["dropped_total"] == 50_030
    assert report["dropped"]["the reply renders to no tokens"] == 50_000
    assert sum(report["dropped"].values()) == 50_030 and len(report["dropped"]) <= 21
    assert len(report["dropped_sample"]) == DROPPED_SAMPLE
    assert len(json.dumps(report)) < 8_000  # one short event line, however much was dropped

    from bot.learning.release import _dropped_note

    note = _dropped_note(TrainResult(Path("/o"), data=report))
    assert note.startswith(" The trainer dropped 50030 row(s): 50000× the reply renders")
