"""A training run's report: the operator's curation since the previous run and each step's
loss (the run page draws both after a restart); its end is counted in /metrics."""

from __future__ import annotations

import bot.metrics as metrics
from bot.settings import Settings
from bot.types import Incoming, RunStatus, Vote
from storage.dashboard import RatingFilter
from tests.support.records import rated
from tests.support.trainers import FakeTrainer, trainer_core

ADMIN = "console:local"


async def _quiet(_text: str) -> None:
    pass


def _ended(status: str) -> float:
    value = metrics.REGISTRY.get_sample_value("selftune_training_runs_total", {"status": status})
    return value or 0.0


async def test_the_report_carries_curation_since_the_last_run_and_the_losses(
    settings: Settings,
) -> None:
    gate = settings.gate.model_copy(update={"min_heldout": 4})
    core = await trainer_core(settings.model_copy(update={"gate": gate}), FakeTrainer())
    try:
        exchanges = []
        for i in range(40):
            who = Incoming("console", f"{100 + i}", f"{100 + i}", f"U{i}", "")
            exchanges.append(
                await rated(core, who, f"message {i}", Vote.UP if i % 2 else Vote.DOWN)
            )
        ratings = await core.repo.dashboard.ratings(RatingFilter(), limit=50)
        # Before an earlier run: not this run's news.
        await core.repo.curation.drop_rating(ratings[0].id, ADMIN)
        earlier = await core.repo.runs.start("command", ADMIN, 1)
        await core.repo.runs.finish(earlier, RunStatus.FAILED, "an earlier run")
        await core.repo.curation.flip_rating(ratings[1].id, ADMIN)
        await core.repo.curation.set_user("console:139", ADMIN, blocked=True)

        ended = _ended("succeeded")
        outcome = await core.finetuner.run(trigger="command", requested_by=ADMIN, notify=_quiet)
        assert outcome.status is RunStatus.SUCCEEDED
        detail = await core.repo.dashboard.run(outcome.run_id)
        assert detail is not None
        assert detail.report["curation"] == {"rating.flip": 1, "user.block": 1}
        assert detail.report["metrics"]["losses"] == [2.5, 1.5]
        assert "losses" not in detail.report["trainer_data"]
        assert _ended("succeeded") == ended + 1
    finally:
        await core.aclose()
