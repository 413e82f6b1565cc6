"""A run that would repeat the last one: no rating cast, changed or withdrawn since the last
version was trained, no curation since (a dashboard flip keeps a rating's time but changes its
label; a drop, a never-train or a blocked rater may leave the same exchanges with other
labels), the same method and settings. Training again would make the same adapter
(the trainer is seeded), so /finetune says so and does nothing. No torch."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bot.learning.protocol import Method
from bot.settings import Settings
from bot.types import AdapterVersion, TrainingRun
from storage.repository import Repository

_RUNS_LOOKED_AT = 20  # failed runs may follow the one that made the last version


async def repeats_last(
    repo: Repository, settings: Settings, method: Method, trained_ids: Sequence[int]
) -> str | None:
    """Why a run on ``trained_ids`` by ``method`` would repeat the last version, or None."""
    found = await _last_version(repo)
    if found is None:
        return None
    run, version = found
    if version.tainted or version.hyperparams.get("method") != method:
        return None
    if set(version.exchange_ids) != set(trained_ids):
        return None
    if not _same_settings(version.hyperparams, settings):
        return None
    if await repo.training.ratings_since(run.started_at) > 0:
        return None  # a vote changed: same exchanges, another label
    if await repo.curation.summary_since(run.started_at):
        return None  # an operator curated the data: perhaps the same exchanges, other labels
    now = "it is serving now" if version.active else f"/activate {version.version} serves it"
    return (
        f"No new ratings since run #{run.id} trained v{version.version} on these "
        f"{len(trained_ids)} exchanges with these settings: another run would make the same "
        f"adapter, so I did nothing ({now}). Rate more replies with 👍/👎, then /finetune."
    )


async def _last_version(repo: Repository) -> tuple[TrainingRun, AdapterVersion] | None:
    for run in await repo.runs.recent(limit=_RUNS_LOOKED_AT):
        if run.adapter_version is not None:
            version = await repo.adapters.get(run.adapter_version)
            return None if version is None else (run, version)
    return None


def _same_settings(hyperparams: Mapping[str, object], settings: Settings) -> bool:
    """The version's recorded LoRA and training settings are today's (compared as JSON)."""
    lora = _json(hyperparams.get("lora")) == _json(settings.lora.model_dump())
    training = _json(hyperparams.get("training")) == _json(settings.training.model_dump())
    return bool(lora and training)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))
