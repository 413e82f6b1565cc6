"""The trainer queue: queued runs in the database, claimed by workers (PostgreSQL: SKIP LOCKED),
heartbeats, abandoned runs requeued or failed, and each result told exactly once.

The worker here runs in the test's process with the stand-in trainer (tests/support/trainers.py);
tests/cli/test_trainer.py runs ``selftune trainer`` as a real process and kills it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.app import Core
from bot.errors import TrainingAlreadyRunning
from bot.learning.finetune import Finetuner
from bot.learning.versions import AdapterVersions
from bot.learning.worker import TrainerWorker
from bot.settings import Settings
from bot.types import Incoming, RunStatus, Vote
from storage.db import create_engine
from storage.repository import Repository
from tests.support.records import rated, say
from tests.support.trainers import FakeTrainer, trainer_core

ME = Incoming("console", "local", "local", "Ann", "")


def queued(settings: Settings, **training: Any) -> Settings:
    """``settings`` with the queue runner and the gate off (every candidate goes live)."""
    return settings.model_copy(
        update={
            "training": settings.training.model_copy(update={"runner": "queue", **training}),
            "gate": settings.gate.model_copy(update={"enabled": False}),
        }
    )


async def _never(_output: str) -> None:
    raise AssertionError("nothing is stale here")


async def test_claim_takes_the_oldest_queued_run_once(repo: Repository) -> None:
    first = await repo.runs.enqueue("command", "console:local", "chat:console:local")
    second = await repo.runs.enqueue("schedule", None, "schedule")
    claimed = await repo.runs.claim("gpu-1", 100)
    assert claimed is not None and claimed.run.id == first
    assert claimed.run.status is RunStatus.RUNNING and claimed.run.host == "gpu-1"
    assert claimed.run.attempts == 1 and claimed.notify_to == "chat:console:local"
    # One run trains at a time: the second waits while the first runs.
    assert await repo.runs.claim("gpu-2", 200) is None
    assert await repo.runs.heartbeat(first, "gpu-1", 100)
    assert not await repo.runs.heartbeat(first, "gpu-2", 200)  # not its run
    await repo.runs.finish(first, RunStatus.SUCCEEDED, "Adapter v1 is live.")
    again = await repo.runs.claim("gpu-2", 200)
    assert again is not None and again.run.id == second
    assert await repo.runs.recover_stale(datetime.now(UTC) - timedelta(minutes=1), 3, _never) == []


async def test_a_stopped_worker_requeues_without_spending_an_attempt(repo: Repository) -> None:
    run_id = await repo.runs.enqueue("command", None, None)
    assert await repo.runs.claim("a", 1) is not None
    assert await repo.runs.requeue(run_id, "a", 1)
    pending = await repo.runs.pending()
    assert pending is not None and pending.status is RunStatus.QUEUED and pending.attempts == 0


async def test_stale_runs_are_requeued_then_failed(repo: Repository, tmp_path: Path) -> None:
    run_id = await repo.runs.enqueue("command", None, "chat:console:local")
    removed: list[str] = []

    async def cleanup(output: str) -> None:
        removed.append(output)

    future = datetime.now(UTC) + timedelta(minutes=1)  # every heartbeat is older than this
    for attempt in (1, 2):
        assert await repo.runs.claim("a", attempt) is not None
        await repo.runs.set_output(run_id, str(tmp_path / "v0001"))
        [stale] = await repo.runs.recover_stale(future, 2, cleanup)
        assert stale.id == run_id
    assert removed == [str(tmp_path / "v0001")] * 2
    [run] = await repo.runs.recent(limit=1)
    assert run.status is RunStatus.FAILED and "stopped answering 2 time(s)" in run.message
    # Its requester is told once, whoever asks first.
    [ended] = await repo.runs.ended_unannounced()
    assert ended.run.id == run_id and ended.notify_to == "chat:console:local"
    assert await repo.runs.announce(run_id)
    assert not await repo.runs.announce(run_id)
    assert await repo.runs.ended_unannounced() == []


async def test_a_stale_run_that_registered_its_version_ends_with_it(
    repo: Repository, tmp_path: Path
) -> None:
    """Killed after registering its version (published whole, maybe live): the run ends with
    that version; it is neither trained again nor its adapter removed. Its requester hears it,
    even when the first telling could not be sent."""
    run_id = await repo.runs.enqueue("command", None, "chat:console:local")
    assert await repo.runs.claim("a", 1) is not None
    await repo.runs.set_output(run_id, str(tmp_path / "v0001"))
    await repo.adapters.add(
        path=str(tmp_path / "v0001"),
        parent=None,
        base_model="m",
        exchange_ids=[],
        metrics={},
        hyperparams={},
        duration_s=1.0,
        training_run_id=run_id,
    )
    removed: list[str] = []

    async def cleanup(output: str) -> None:
        removed.append(output)

    future = datetime.now(UTC) + timedelta(minutes=1)
    [stale] = await repo.runs.recover_stale(future, 2, cleanup)
    assert removed == [] and stale.status is RunStatus.SUCCEEDED and stale.adapter_version == 1
    assert await repo.runs.claim("b", 2) is None  # nothing to train again
    assert await repo.runs.announce(run_id)
    assert await repo.runs.announce(run_id, told=False)  # the send failed: given back
    [ended] = await repo.runs.ended_unannounced()
    assert ended.run.id == run_id and "made version 1" in ended.run.message


async def test_a_local_pid_check_leaves_a_workers_run_alone(repo: Repository) -> None:
    """A serving process starting up must not end a run a worker on another machine trains
    (its pid means nothing here); the workers watch its heartbeat instead."""
    await repo.runs.enqueue("command", None, None)
    assert await repo.runs.claim("elsewhere", 999_999) is not None
    assert await repo.runs.interrupt_stale(lambda _pid: False) == 0


async def test_a_local_run_of_another_machine_is_left_to_it(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving processes on several machines share PostgreSQL with runner = "local": a run
    training on one machine is not ended by another starting up (the pid is not its)."""
    from storage import training_runs

    monkeypatch.setattr(training_runs, "HOST", "machine-1")
    run_id = await repo.runs.start("command", None, pid=123)
    monkeypatch.setattr(training_runs, "HOST", "machine-2")
    assert await repo.runs.interrupt_stale(lambda _pid: False) == 0
    monkeypatch.setattr(training_runs, "HOST", "machine-1")
    assert await repo.runs.interrupt_stale(lambda _pid: False) == 1  # there, its pid is gone
    [run] = await repo.runs.recent(limit=1)
    assert run.id == run_id and run.status is RunStatus.INTERRUPTED


@pytest.mark.postgres
async def test_two_workers_never_take_the_same_run(postgres_server: str) -> None:
    from migrations import upgrade_database
    from tests.conftest import _fresh_postgres_database

    url = await _fresh_postgres_database(postgres_server)
    engine = create_engine(url)
    await upgrade_database(engine)
    workers = [Repository(engine), Repository(create_engine(url)), Repository(create_engine(url))]
    try:
        ids = [await workers[0].runs.enqueue("command", None, None) for _ in range(12)]
        taken: list[tuple[str, int]] = []

        async def drain(name: str, repo: Repository) -> None:
            idle = 0
            while idle < 100:  # a second of nothing to take: the queue is drained
                claimed = await repo.runs.claim(name, 1)
                if claimed is None:
                    idle += 1
                    await asyncio.sleep(0.01)
                    continue
                idle = 0
                taken.append((name, claimed.run.id))
                await repo.runs.finish(claimed.run.id, RunStatus.SUCCEEDED, "done")
                await asyncio.sleep(0.02)  # as a real worker's run takes time: others claim

        await asyncio.gather(*(drain(f"w{i}", repo) for i, repo in enumerate(workers)))
        assert sorted(run_id for _, run_id in taken) == ids  # every run, each exactly once
        assert len({name for name, _ in taken}) > 1  # and more than one worker took some
    finally:
        for repo in workers:
            await repo.aclose()


async def _worker(core: Core, trainer: FakeTrainer, **kwargs: Any) -> TrainerWorker:
    finetuner = Finetuner(
        core.settings, core.repo, AdapterVersions(core.repo, None), _model_dir, trainer
    )
    return TrainerWorker(core.settings, core.repo, finetuner, **kwargs)


async def _model_dir() -> Path:
    return Path("/m")


async def test_finetune_queues_and_the_serving_process_swaps_and_tells(
    settings: Settings,
) -> None:
    core = await trainer_core(queued(settings), FakeTrainer())
    told: list[tuple[str, str]] = []

    async def sender(chat_key: str, text: str) -> None:
        told.append((chat_key, text))

    core.outbox.register("console", sender)
    try:
        await rated(core, ME, "hello", Vote.UP)
        reply = await say(core, ME, "/finetune")
        assert reply.text.startswith("Queued as run #1 (SFT)")
        assert "a trainer will take it" in reply.text and not core.finetuner.running
        with pytest.raises(TrainingAlreadyRunning, match="already queued"):
            await core.finetuner.start(trigger="command", requested_by=None, notify=sender_log)
        assert "run #1 queued" in (await say(core, ME, "/status")).text
        outcome = await (await _worker(core, FakeTrainer(), host="gpu-box")).once()
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
        assert core.versions.current is None and told == []  # nothing noticed yet
        await core.watcher.tick()
        assert core.versions.current == 1  # swapped in, without a reply
        assert told == [("console:local", "Training run #1: " + outcome.message)]
        await core.watcher.tick()
        assert len(told) == 1  # told once
    finally:
        await core.aclose()


async def sender_log(_text: str) -> None:
    return None


async def test_a_stopped_worker_puts_its_run_back(settings: Settings) -> None:
    core = await trainer_core(queued(settings), FakeTrainer())
    try:
        await rated(core, ME, "hello", Vote.UP)
        await say(core, ME, "/finetune")
        hold = asyncio.Event()
        worker = await _worker(core, FakeTrainer(hold=hold), host="a", pid=1)
        task = asyncio.create_task(worker.once())
        await _partial_written(core)
        task.cancel()  # SIGTERM or Ctrl-C in `selftune trainer`
        with pytest.raises(asyncio.CancelledError):
            await task
        pending = await core.repo.runs.pending()
        assert pending is not None and pending.status is RunStatus.QUEUED
        assert not any(core.settings.adapters_dir.iterdir())  # no partial adapter left
        outcome = await (await _worker(core, FakeTrainer(), host="b", pid=2)).once()
        assert outcome is not None and outcome.version == 1
        assert [v.version for v in await core.repo.adapters.all()] == [1]
    finally:
        await core.aclose()


async def test_a_worker_that_lost_its_run_stops_it(settings: Settings) -> None:
    core = await trainer_core(queued(settings, heartbeat_s=0.05), FakeTrainer())
    try:
        await rated(core, ME, "hello", Vote.UP)
        await say(core, ME, "/finetune")
        worker = await _worker(core, FakeTrainer(hold=asyncio.Event()), host="a", pid=1)
        task = asyncio.create_task(worker.once())
        await _partial_written(core)
        # Another worker took it as stale (this one looked dead): this one stops, quietly.
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert len(await core.repo.runs.recover_stale(later, 3, _ignore)) == 1
        assert await asyncio.wait_for(task, 5) is None
        pending = await core.repo.runs.pending()
        assert pending is not None and pending.status is RunStatus.QUEUED
    finally:
        await core.aclose()


async def test_a_heartbeat_the_database_refused_is_sent_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database away for a moment: the heartbeat is tried again, the run goes on to its
    end with this worker (it would otherwise go stale and be trained by a second one)."""
    core = await trainer_core(queued(settings, heartbeat_s=0.02), FakeTrainer())
    runs = type(core.repo.runs)
    real = runs.heartbeat
    calls: list[int] = []
    sent_again = asyncio.Event()

    async def flaky(self: Any, run_id: int, host: str, pid: int) -> bool:
        calls.append(run_id)
        if len(calls) <= 2:
            raise ConnectionError("the database is restarting")
        sent_again.set()
        return await real(self, run_id, host, pid)

    monkeypatch.setattr(runs, "heartbeat", flaky)
    try:
        await rated(core, ME, "hello", Vote.UP)
        await say(core, ME, "/finetune")
        hold = asyncio.Event()
        worker = await _worker(core, FakeTrainer(hold=hold), host="a", pid=1)
        task = asyncio.create_task(worker.once())
        await _partial_written(core)
        await asyncio.wait_for(sent_again.wait(), 5)  # two refused, then sent again
        hold.set()
        outcome = await asyncio.wait_for(task, 5)
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
    finally:
        await core.aclose()


async def _ignore(_output: str) -> None:
    return None


async def _partial_written(core: Core) -> None:
    """Wait until the trainer wrote half an adapter (its ``.partial`` folder)."""
    for _ in range(500):
        if any(core.settings.adapters_dir.glob("*.partial")):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the trainer never started writing")


async def test_only_a_process_that_can_deliver_tells_the_result(settings: Settings) -> None:
    core = await trainer_core(queued(settings), FakeTrainer())
    told: list[tuple[str, str]] = []

    async def sender(chat_key: str, text: str) -> None:
        told.append((chat_key, text))

    try:
        for address in ("chat:telegram:7", "group:telegram:-5"):
            run_id = await core.repo.runs.enqueue("command", "telegram:7", address)
            assert await core.repo.runs.claim("gpu", 1) is not None
            await core.repo.runs.finish(run_id, RunStatus.FAILED, f"Training run #{run_id} failed")
        await core.watcher.tick()  # this process serves no Telegram: it leaves them
        assert told == [] and len(await core.repo.runs.ended_unannounced()) == 2
        core.outbox.register("telegram", sender)
        await core.watcher.tick()
        assert told == [
            ("telegram:7", "Training run #1 failed"),
            (
                "telegram:-5",
                "Training run #2 ended (failed). Details for admins: /status, /adapters.",
            ),
        ]
    finally:
        await core.aclose()


def test_the_training_device_is_checked_and_reaches_the_trainer(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from bot.learning.protocol import TrainingSpec
    from bot.settings import TrainingSettings

    with pytest.raises(ValidationError, match="'gpu' is not a device: use 'auto', 'cpu'"):
        TrainingSettings(device="gpu")
    with pytest.raises(ValidationError, match="runner"):
        TrainingSettings(runner="elsewhere")
    training = TrainingSettings(device="CUDA:1", runner="queue")
    spec = TrainingSpec(Path("/m"), Path("/d"), Path("/o"), training=training)
    (tmp_path / "spec.json").write_text(spec.to_json(), encoding="utf-8")
    assert TrainingSpec.load(tmp_path / "spec.json").training.device == "cuda:1"
