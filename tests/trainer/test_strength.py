"""Issue 10's trainer: only the rows the steps use, length buckets, the SFT term next to KTO,
DPO on preference pairs, and the step's share of the bf16 peak."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from bot.learning.protocol import Event, Phase, Start, TrainingSpec
from bot.settings import TrainingSettings
from bot.trainer.examples import IGNORE
from bot.trainer.flops import utilisation
from bot.trainer.loop import Work, batches, rows_used
from bot.trainer.pairs import build_pairs, dpo_losses
from bot.trainer.run import train
from tests.trainer.test_kto import QUIET, rated_rows, with_spec
from tests.trainer.test_run import SYSTEM, write_spec


def test_rows_used_are_all_when_the_steps_cover_an_epoch_else_a_seeded_sample() -> None:
    items = list(range(10))
    assert rows_used(items, 4, 3, seed=0) == items  # 12 ≥ 10
    used = rows_used(items, 2, 3, seed=0)
    assert len(used) == 6 and used == sorted(used)  # in their order
    assert used == rows_used(items, 2, 3, seed=0) and used != rows_used(items, 2, 3, seed=1)


def test_bucketed_batches_group_similar_lengths_and_see_every_item_once_an_epoch() -> None:
    lengths = [3, 50, 4, 48, 5, 52, 6, 47] * 4
    items = list(range(len(lengths)))
    epoch = list(batches(items, 4, 8, seed=0, length=lambda i: lengths[i]))
    assert sorted(i for batch in epoch for i in batch) == items
    padded = sum(len(b) * max(lengths[i] for i in b) for b in epoch)
    plain = list(batches(items, 4, 8, seed=0))
    assert padded < 0.7 * sum(len(b) * max(lengths[i] for i in b) for b in plain)


def test_dpo_loss_is_log_two_at_the_reference_and_falls_as_chosen_rises() -> None:
    zero = torch.tensor([0.0])
    assert float(dpo_losses(zero, zero, zero, zero, 0.1)) == pytest.approx(math.log(2))
    better = dpo_losses(torch.tensor([2.0]), torch.tensor([-2.0]), zero, zero, 0.1)
    assert float(better) == pytest.approx(-math.log(1 / (1 + math.exp(-0.4))))


def test_pairs_are_tokenized_with_their_shared_prompt(tokenizer: Any) -> None:
    pair = {
        "prompt": [SYSTEM, {"role": "user", "content": "Tell me about the sea."}],
        "chosen": [{"role": "assistant", "content": "The sea is calm and blue."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    pairs, dropped = build_pairs(tokenizer, [pair, {"prompt": "bad"}], 64)
    assert len(pairs) == 1 and len(dropped) == 1 and dropped[0].reason.startswith("pair:")
    chosen, rejected = pairs[0].chosen, pairs[0].rejected
    assert chosen.input_ids[: chosen.prompt_len] == rejected.input_ids[: rejected.prompt_len]
    assert (chosen.label, rejected.label) == (True, False)
    assert [t for t in rejected.labels if t != IGNORE] == rejected.reply_ids


def test_utilisation_counts_a_backward_as_a_second_forward() -> None:
    work = Work(grad_tokens=100, nograd_tokens=50, seconds=2.0)
    numbers = utilisation(1000, 200, work, peak=1e6)
    # 2 · 1000 · (2 · 100 + 50) FLOPs in 2 s = 250 000 FLOP/s of a 1 000 000 peak
    assert numbers["mfu"] == pytest.approx(0.25)
    assert utilisation(1000, 200, Work(), 1e6) == {}
    # the LM head (200 weights) skipped on 50 of the gradient steps' and 10 of the others' tokens
    work = Work(grad_tokens=100, nograd_tokens=50, grad_headless=50, nograd_headless=10)
    work.seconds = 2.0
    flops = 2 * 1000 * (2 * 100 + 50) - 2 * 200 * (2 * 50 + 10)
    assert utilisation(1000, 200, work, 1e6)["step_tflops"] == pytest.approx(flops / 2 / 1e12)


@QUIET
def test_a_run_cut_short_scores_and_records_only_the_rows_it_trains_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = rated_rows(24)  # 16 training rows
    spec_path = with_spec(write_spec(tmp_path, tiny_model_dir, rows, max_steps=3), method="kto")
    events: list[Event] = []
    result = train(TrainingSpec.load(spec_path), events.append)
    start = events[0]
    assert isinstance(start, Start) and start.liked + start.disliked == 6  # 3 steps of 2
    reference = [e for e in events if isinstance(e, Phase) and e.phase == "reference"]
    assert reference[0].examples == 6
    trained = result.data["trained_exchange_ids"]
    assert len(trained) == 6 and set(trained) <= {r["exchange_id"] for r in rows}
    record = json.loads((tmp_path / "adapters" / "v1" / "training.json").read_text())
    assert record["exchange_ids"] == trained
    assert 0 < result.metrics["mfu"] < 1 and result.metrics["peak_bf16_tflops"] > 0


@QUIET
def test_preference_pairs_train_with_dpo_next_to_the_ratings(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pair = {
        "prompt": [SYSTEM, {"role": "user", "content": "Tell me about the sea."}],
        "chosen": [{"role": "assistant", "content": "The sea is calm and blue."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    pairs.write_text(json.dumps(pair) + "\n")
    weights = []
    for weight in (1.0, 0.0):  # the same run with and without the pairwise term
        folder = tmp_path / f"pair_weight_{weight}"
        folder.mkdir()
        spec_path = write_spec(
            folder, tiny_model_dir, rated_rows(12), learning_rate=5e-2, pair_weight=weight
        )
        with_spec(spec_path, method="kto", pairs_dataset=str(pairs))
        result = train(TrainingSpec.load(spec_path), lambda event: None)
        assert result.data["pairs"] == (1 if weight else 0)
        weights.append(load_file(folder / "adapters" / "v1" / "adapter_model.safetensors"))
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_kto_runs_add_the_liked_nll_and_the_anchor_by_default() -> None:
    settings = TrainingSettings()
    assert settings.sft_weight == 3.0 and settings.schedule == "constant"
    assert settings.anchor_weight == 1.0
    assert settings.pair_weight > 0


@QUIET
@pytest.mark.parametrize(
    ("setting", "freed"), [("nothing", []), ("end", ["<|im_end|>"]), ("rated", ["<|im_end|>"])]
)
def test_a_kto_run_frees_and_records_what_its_anchor_leaves_to_the_ratings(
    tiny_model_dir: Path, tmp_path: Path, setting: str, freed: list[str]
) -> None:
    spec_path = write_spec(
        tmp_path, tiny_model_dir, rated_rows(24), anchor_free=setting, max_steps=8
    )
    result = train(TrainingSpec.load(with_spec(spec_path, method="kto")), lambda event: None)
    recorded = result.data["anchor_free"]
    assert recorded[: len(freed)] == freed
    if setting == "rated":  # and the tokens 👍 and 👎 replies use at different rates
        assert len(recorded) > 1 and "<|im_end|>" not in recorded[1:]
    else:
        assert recorded == freed
    record = json.loads((tmp_path / "adapters" / "v1" / "training.json").read_text())
    assert record["hyperparams"]["training"]["anchor_free"] == setting
    assert record["anchor_free"] == recorded
    # The freed tokens reach the steps: the same run with the anchor holding everything
    # trains other weights.
    held = tmp_path / "held"
    held.mkdir()
    spec_path = write_spec(held, tiny_model_dir, rated_rows(24), anchor_free="nothing", max_steps=8)
    train(TrainingSpec.load(with_spec(spec_path, method="kto")), lambda event: None)
    weights = [
        load_file(d / "adapters" / "v1" / "adapter_model.safetensors") for d in (tmp_path, held)
    ]
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same == (setting == "nothing")
