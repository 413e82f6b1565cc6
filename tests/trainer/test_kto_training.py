"""The trainer with both signals: KTO, the held-out evaluation next to the serving adapter, the
self-supervised term, and the token-level data checks on 👍 and 👎 rows alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from bot.trainer.examples import IGNORE
from bot.trainer.lm import build_lm_examples
from bot.trainer.run import TrainingSpec, build_examples, main, train
from tests.trainer.test_run import ROWS, row, run_trainer, write_spec

LIKED = "The sea is calm and blue."
DISLIKED = "No."


def rated_rows(count: int) -> list[dict[str, Any]]:
    """Liked long answers, disliked curt ones, alternating; rows 4 and 5 of every 6 held out."""
    rows = []
    for i in range(count):
        liked = i % 2 == 0
        item = row(
            100 + i, f"Tell me about the sea, part {i}.", LIKED if liked else DISLIKED, liked
        )
        item["split"] = "heldout" if i % 6 >= 4 else "train"
        rows.append(item)
    return rows


def with_spec(path: Path, **changes: Any) -> Path:
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))
    return path


def test_both_labels_get_the_reply_and_end_of_turn_as_labels(tokenizer: Any) -> None:
    examples, dropped = build_examples(tokenizer, rated_rows(8), 64, liked_only=False)
    assert dropped == [] and {ex.label for ex in examples} == {True, False}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for example in examples:
        learned = [t for t in example.labels if t != IGNORE]
        assert learned == example.reply_ids and learned[-1] == end
        assert tokenizer.decode(learned) in (f"{LIKED}<|im_end|>", f"{DISLIKED}<|im_end|>")
    heldout, _ = build_examples(tokenizer, rated_rows(8), 64, liked_only=False, split="heldout")
    assert {ex.exchange_id for ex in heldout} == {104, 105}
    assert not {ex.exchange_id for ex in heldout} & {ex.exchange_id for ex in examples}


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_kto_subprocess_evaluates_base_serving_and_candidate(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    serving_dir = tmp_path / "serving"
    serving_dir.mkdir()
    serving = TrainingSpec.load(write_spec(serving_dir, tiny_model_dir, ROWS))
    train(serving, lambda event: None)  # an earlier adapter: the one "serving now"

    rows = rated_rows(24)
    spec_path = write_spec(tmp_path, tiny_model_dir, rows, learning_rate=2e-2, max_steps=6)
    with_spec(spec_path, method="kto", current_adapter=str(serving.output_dir))
    code, events, stderr = run_trainer(spec_path)

    assert code == 0, stderr
    start = events[0]
    assert (start["method"], start["liked"], start["disliked"]) == ("kto", 8, 8)
    assert (start["heldout_liked"], start["heldout_disliked"]) == (4, 4)
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases == ["baseline", "reference", "training", "evaluation"]
    done = events[-1]
    assert done["event"] == "done" and done["data"]["method"] == "kto"
    assert done["metrics"]["desirable_weight"] == done["metrics"]["undesirable_weight"] == 1.0
    evaluation = done["evaluation"]
    assert evaluation["heldout"] == {"liked": 4, "disliked": 4}
    for model in ("base", "current", "candidate"):
        assert set(evaluation[model]) == {"preference_accuracy", "liked_nll", "reward_margin"}
    assert evaluation["base"]["reward_margin"] == 0.0
    assert evaluation["current"] != evaluation["base"]  # the serving adapter was loaded
    # Trained on 👍 and 👎, the candidate ranks the held-out liked replies first.
    assert evaluation["candidate"]["preference_accuracy"] == 1.0
    assert evaluation["candidate"]["reward_margin"] > 0
    output = TrainingSpec.load(spec_path).output_dir
    record = json.loads((output / "training.json").read_text())
    heldout_ids = {r["exchange_id"] for r in rows if r["split"] == "heldout"}
    assert set(record["heldout_exchange_ids"]) == heldout_ids
    assert not heldout_ids & set(record["exchange_ids"])  # never trained on
    weights = load_file(output / "adapter_model.safetensors")
    assert all(".serving." not in key for key in weights)  # only the candidate's own tensors


def test_self_supervised_term_labels_the_user_message_only(
    tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    unrated = [
        {
            "prompt": [
                {"role": "system", "content": "You are a tiny test model."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "where is the boat?"},
            ],
            "exchange_id": 9,
        },
        {"prompt": [{"role": "user", "content": "only one turn"}], "exchange_id": 10},
    ]
    (example,) = build_lm_examples(tokenizer, unrated, 64)
    learned = tokenizer.decode([t for t in example.labels if t != IGNORE])
    assert learned == "<|im_start|>user\nwhere is the boat?<|im_end|>\n"

    lm_path = tmp_path / "unrated.jsonl"
    lm_path.write_text("".join(json.dumps(r) + "\n" for r in unrated * 4))
    spec_path = write_spec(tmp_path, tiny_model_dir, ROWS, lm_weight=0.5)
    with_spec(spec_path, lm_dataset=str(lm_path))
    events: list[dict[str, Any]] = []
    train(TrainingSpec.load(spec_path), events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert events[0]["lm_examples"] == 4 and all(e["lm_loss"] > 0 for e in steps)


def test_an_unknown_method_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    import io

    spec_path = with_spec(write_spec(tmp_path, tiny_model_dir, ROWS), method="dpo")
    out = io.StringIO()
    assert main([str(spec_path)], events=out) == 1
    assert "method must be 'sft' or 'kto'" in json.loads(out.getvalue())["message"]


def test_kto_with_only_disliked_rows_still_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [row(i, f"hi {i}", DISLIKED, False) for i in range(4)]
    spec = TrainingSpec.load(with_spec(write_spec(tmp_path, tiny_model_dir, rows), method="kto"))
    result = train(spec, lambda event: None)
    assert result.metrics["examples"] == 4.0 and result.evaluation == {}
    weights = load_file(spec.output_dir / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
