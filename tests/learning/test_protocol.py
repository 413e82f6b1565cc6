"""The trainer protocol: every event survives the wire, lines that are not events are ignored,
malformed events are refused, and the spec reads what it writes (and what older parents wrote)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.errors import TrainingError
from bot.learning.evaluation import Evaluation
from bot.learning.protocol import (
    Done,
    Error,
    Event,
    MalformedEvent,
    Phase,
    SampleSpec,
    Start,
    Step,
    TrainingSpec,
    TrainResult,
    parse,
)
from bot.settings import LoraSettings, TrainingSettings
from bot.types import GenerationParams

EVALUATION = Evaluation(
    base={"liked_nll": 2.5, "reward_margin": 0.0},
    serving={"liked_nll": 2.2, "reward_margin": 0.1},
    candidate={"liked_nll": 2.0, "reward_margin": 0.3},
    liked=3,
    disliked=2,
)
EVENTS: list[Event] = [
    Start("kto", examples=40, total_steps=10, dropped=2, liked=20, disliked=20, lm_examples=5),
    Start("sft", examples=1, total_steps=1),
    Phase("baseline", heldout=8),
    Phase("reference", examples=40),
    Phase("training"),
    Phase("evaluation", heldout=8),
    Step(1, 10, loss=0.693147),
    Step(2, 10, loss=0.5, kl=0.01, lm_loss=3.25),
    Done({"train_loss": 0.6, "steps": 10.0}, EVALUATION, {"method": "kto", "dropped": {}}),
    Done({"train_loss": 0.6}),
    Error("the reply renders to no tokens"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__.lower())
def test_every_event_comes_back_from_its_line(event: Event) -> None:
    line = event.to_json()
    assert "\n" not in line
    assert parse(line) == event
    assert parse(f"  {line}\n") == event  # as read from a pipe


def test_the_wire_format_is_flat_json_with_its_kind_and_no_nulls() -> None:
    assert json.loads(Phase("training").to_json()) == {"event": "phase", "phase": "training"}
    assert json.loads(Step(3, 9, loss=1.5).to_json()) == {
        "event": "step",
        "step": 3,
        "total_steps": 9,
        "loss": 1.5,
    }
    done = json.loads(Done({"steps": 1.0}, EVALUATION).to_json())
    assert done["evaluation"]["current"] == EVALUATION.serving  # as stored in run reports
    assert done["evaluation"]["heldout"] == {"liked": 3, "disliked": 2}
    assert json.loads(Done().to_json())["evaluation"] == {}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "Loading checkpoint shards: 100%",
        "{not json",
        "[1, 2, 3]",
        '"a string"',
        "42",
        '{"no_event": 1}',
    ],
)
def test_lines_that_are_not_events_are_ignored(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"event": "finish"}', "unknown trainer event 'finish'"),
        ('{"event": 3}', "unknown trainer event 3"),
        ('{"event": "step", "step": 1, "total_steps": 2}', "'step' lacks 'loss'"),
        ('{"event": "step", "step": "1", "total_steps": 2, "loss": 1}', "bad 'step'"),
        ('{"event": "step", "step": true, "total_steps": 2, "loss": 1}', "bad 'step'"),
        ('{"event": "step", "step": 1.5, "total_steps": 2, "loss": 1}', "bad 'step'"),
        ('{"event": "phase", "phase": "warmup"}', "bad 'phase'"),
        ('{"event": "start", "method": "dpo", "examples": 1, "total_steps": 1}', "bad 'method'"),
        ('{"event": "start", "method": "sft", "examples": 1}', "lacks 'total_steps'"),
        ('{"event": "done", "metrics": {"loss": "low"}}', "bad 'metrics'"),
        ('{"event": "done", "metrics": [], "evaluation": {}}', "bad 'metrics'"),
        ('{"event": "done", "evaluation": {"base": {}}}', "bad 'evaluation'"),
        ('{"event": "error"}', "'error' lacks 'message'"),
    ],
)
def test_malformed_events_are_refused_clearly(line: str, says: str) -> None:
    with pytest.raises(MalformedEvent, match=f".*{_escape(says)}"):
        parse(line)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_parent_sees_done_as_a_train_result(tmp_path: Path) -> None:
    done = Done({"train_loss": 0.5}, EVALUATION, {"method": "sft"})
    result = TrainResult.of(tmp_path, done)
    assert (result.output_dir, result.metrics, result.evaluation) == (
        tmp_path,
        {"train_loss": 0.5},
        EVALUATION,
    )
    assert result.data == {"method": "sft"}


def test_the_spec_reads_what_it_writes(tmp_path: Path) -> None:
    spec = TrainingSpec(
        model_dir=tmp_path / "model",
        dataset=tmp_path / "dataset.jsonl",
        output_dir=tmp_path / "adapters" / "v0002",
        lora=LoraSettings(r=4),
        training=TrainingSettings(batch_size=2, lm_weight=0.5),
        threads=2,
        method="kto",
        serving_lora=tmp_path / "adapters" / "v0001",
        serving_version=1,
        lm_dataset=tmp_path / "unrated.jsonl",
        pairs_dataset=tmp_path / "pairs.jsonl",
        samples=SampleSpec(
            5,
            2,
            GenerationParams(max_new_tokens=9, temperature=0.0),
            0.8,
            [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]],
        ),
    )
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert TrainingSpec.load(path) == spec
    bare = TrainingSpec(tmp_path / "m", tmp_path / "d", tmp_path / "o")
    path.write_text(bare.to_json())
    assert TrainingSpec.load(path) == bare and bare.samples is None
    partial = {"samples": {"prompts": 5, "params": {}}}
    with pytest.raises(TrainingError, match=r"lacks 'samples\.per_prompt'"):
        TrainingSpec.from_dict(json.loads(spec.to_json()) | partial)
    written = json.loads(spec.to_json())
    written["samples"]["general"] = ["Hi"]  # a prompt is a list of messages
    with pytest.raises(TrainingError, match="a prompt must be a list of messages"):
        TrainingSpec.from_dict(written)


def test_a_spec_written_before_the_rename_still_reads(tmp_path: Path) -> None:
    old = {
        "model_dir": "/m",
        "dataset": "/d",
        "output_dir": "/o",
        "current_adapter": "/adapters/v0001",
        "current_version": 1,
    }
    spec = TrainingSpec.from_dict(old)
    assert spec.serving_lora == Path("/adapters/v0001") and spec.serving_version == 1
    with pytest.raises(TrainingError, match="method must be 'sft' or 'kto'"):
        TrainingSpec.from_dict(old | {"method": "dpo"})
