"""KTO on the tiny model: the loss equals TRL's KTOTrainer on the same batch; weights balance;
mismatched pairs keep the reply; training moves liked replies up and disliked ones down. And the
trainer with both signals: KTO, the held-out evaluation next to the serving LoRA, the
self-supervised term, and the token-level data checks on 👍 and 👎 rows alike."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from bot.engine.lora import lora_config, wrap_lora
from bot.learning.protocol import Done, Event, Phase, Start, Step, TrainingSpec
from bot.settings import LoraSettings, TrainingSettings
from bot.trainer.anchor import anchor_kl
from bot.trainer.examples import IGNORE, Example, build_examples
from bot.trainer.kto import (
    kto_losses,
    kto_step,
    kto_weights,
    mismatched_pairs,
    reference_items,
)
from bot.trainer.lm import build_lm_examples
from bot.trainer.loop import Runtime, forward, optimize, score, sequence_logps
from bot.trainer.run import main, train
from bot.types import GenerationParams
from tests.trainer.test_run import ROWS, row, run_trainer, write_spec

CPU = torch.device("cpu")
QUIET = pytest.mark.filterwarnings(
    "ignore:.*(gradient_checkpointing|is_gradient_checkpointing).*:FutureWarning"
)


def rows(count: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": f"Tell me about the sea {i}."}],
            "completion": [
                {"role": "assistant", "content": "The sea is calm and blue." if i % 2 else "No."}
            ],
            "label": bool(i % 2),
            "exchange_id": i,
        }
        for i in range(count)
    ]


def test_weights_balance_desirable_and_undesirable() -> None:
    wd, wu = kto_weights(30, 10)
    assert wd * 30 == pytest.approx(wu * 10)  # λ_D n_D / (λ_U n_U) = 1, inside [1, 4/3]
    assert (wd * 30 + wu * 10) / 40 == pytest.approx(1.0)  # mean weight 1
    assert kto_weights(0, 5) == (1.0, 1.0)


def test_mismatched_pairs_take_another_reply_and_never_cut_it() -> None:
    examples = [
        Example(list(range(10 * i, 10 * i + 6)), [IGNORE] * 4 + [1, 2], i, prompt_len=4)
        for i in range(1, 5)
    ]
    pairs = mismatched_pairs(examples, max_length=5, seed=0)
    for example, pair in zip(examples, pairs, strict=True):
        assert pair.reply_ids != example.reply_ids or len(examples) == 1
        assert len(pair.input_ids) <= 5 and len(pair.reply_ids) == 2
        assert pair.input_ids[: pair.prompt_len] == example.input_ids[4 - pair.prompt_len : 4]
        assert [t for t in pair.labels if t != IGNORE] == pair.reply_ids
    # Every reply is used once: a rotation.
    assert sorted(p.reply_ids[0] for p in pairs) == sorted(e.reply_ids[0] for e in examples)


def _perturb(model: Any) -> None:
    """A non-zero adapter, so the policy differs from the reference (the base)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)


@QUIET
def test_loss_equals_trl_kto_trainer(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.kto_config import KTOConfig
    from trl.trainer.kto_trainer import KTOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = KTOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_length=64,
        beta=0.3,
        desirable_weight=1.5,
        undesirable_weight=0.75,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's own notes on CPU defaults
        trainer = KTOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            args=args,
            train_dataset=Dataset.from_list(rows()),
            processing_class=tokenizer,
            peft_config=lora_config(LoraSettings(dropout=0.0)),  # reference: adapter off = base
        )
    model = trainer.model
    assert model is not None
    _perturb(model)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, batch))

    def examples(prefix: str) -> list[Example]:
        out = []
        for ids, mask, completion in zip(
            batch[f"{prefix}input_ids"],
            batch[f"{prefix}attention_mask"],
            batch[f"{prefix}completion_mask"],
            strict=True,
        ):
            keep = mask.bool()
            tokens, labelled = ids[keep].tolist(), completion[keep].bool().tolist()
            out.append(
                Example(
                    tokens, [t if on else IGNORE for t, on in zip(tokens, labelled, strict=True)]
                )
            )
        return out

    rt = Runtime(CPU, tokenizer.pad_token_id, bf16=False)
    policy, pairs = examples(""), examples("KL_")
    with torch.no_grad():
        logps = sequence_logps(model, policy, rt)
        kl = (sequence_logps(model, pairs, rt) - _ref(model, pairs, rt)).mean().clamp(min=0)
        ours = kto_losses(
            logps, _ref(model, policy, rt), batch["label"].bool(), kl, 0.3, (1.5, 0.75)
        )
    assert float(ours.mean()) == pytest.approx(trl_loss, abs=1e-5)
    assert trl_loss != pytest.approx(0.5, abs=1e-3)  # a real difference from the reference


def _ref(model: Any, examples: list[Example], rt: Runtime) -> torch.Tensor:
    with model.disable_adapter():
        return sequence_logps(model, examples, rt)


@QUIET
def test_kto_raises_liked_and_lowers_disliked_replies(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, dropped = build_examples(tokenizer, rows(16), 64, liked_only=False)
    assert dropped == [] and {ex.label for ex in examples} == {True, False}
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = wrap_lora(base, LoraSettings())
    rt = Runtime(CPU, tokenizer.pad_token_id, bf16=False)
    events: list[Event] = []
    items = reference_items(model, examples, 64, 0, rt, events.append)
    settings = TrainingSettings(batch_size=8, learning_rate=2e-2, epochs=6.0)
    step = kto_step(model, rt, beta=0.5, weights=kto_weights(8, 8))
    losses = optimize(model, items, settings, 12, step, events.append)
    last = events[-1]
    assert events[0] == Phase("reference", examples=16)
    assert isinstance(last, Step) and last.step == 12
    assert last.kl is not None and losses[-1] < losses[0]
    ratios = [s - i.ref_logp for (s, _), i in zip(score(model, examples, rt), items, strict=True)]
    liked = [r for r, ex in zip(ratios, examples, strict=True) if ex.label]
    disliked = [r for r, ex in zip(ratios, examples, strict=True) if not ex.label]
    assert min(liked) > 0 > max(disliked)


def _drift(model: Any, items: list[Any], rt: Runtime) -> float:
    """Mean KL(base top-K ‖ adapter) per reply token over ``items`` (no grad)."""
    with torch.no_grad():
        out = forward(model.eval(), [i.example for i in items], rt)
        model.train()
        return float(anchor_kl(out, [i.anchor for i in items]) / out.labelled.sum())


@QUIET
def test_the_anchor_keeps_the_adapter_near_the_base_where_the_ratings_move_it(
    tiny_model_dir: Path,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = build_examples(tokenizer, rows(16), 64, liked_only=False)
    rt = Runtime(CPU, tokenizer.pad_token_id, bf16=False)
    drift, margin = {}, {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        model = wrap_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSettings())
        items = reference_items(model, examples, 64, 0, rt, lambda _: None, anchor=True)
        assert all(i.anchor is not None and len(i.anchor.ids) for i in items)
        assert _drift(model, items, rt) == pytest.approx(0.0, abs=1e-5)  # a fresh adapter: base
        settings = TrainingSettings(batch_size=8, learning_rate=2e-2, epochs=6.0)
        step = kto_step(model, rt, 0.5, kto_weights(8, 8), anchor_weight=weight)
        optimize(model, items, settings, 12, step, lambda _: None)
        drift[weight] = _drift(model, items, rt)
        scores = score(model, examples, rt)
        ratios = [s - i.ref_logp for (s, _), i in zip(scores, items, strict=True)]
        liked = [r for r, ex in zip(ratios, examples, strict=True) if ex.label]
        disliked = [r for r, ex in zip(ratios, examples, strict=True) if not ex.label]
        margin[weight] = min(liked) - max(disliked)
    assert drift[5.0] < 0.5 * drift[0.0]  # anchored: much closer to the base ...
    assert margin[5.0] > 0  # ... and still ranking liked over disliked


def test_an_anchored_step_needs_anchored_items(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = build_examples(tokenizer, rows(4), 64, liked_only=False)
    rt = Runtime(CPU, tokenizer.pad_token_id, bf16=False)
    model = wrap_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSettings())
    items = reference_items(model, examples, 64, 0, rt, lambda _: None)
    with pytest.raises(ValueError, match="anchor=True"):
        kto_step(model, rt, 0.5, kto_weights(2, 2), anchor_weight=1.0)(items)


# --- the trainer with both signals ------------------------------------------------------


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


def _assert_the_candidate_left_out_heldout_and_serving(
    spec_path: Path, rows: list[dict[str, Any]]
) -> None:
    output = TrainingSpec.load(spec_path).output_dir
    record = json.loads((output / "training.json").read_text())
    heldout_ids = {r["exchange_id"] for r in rows if r["split"] == "heldout"}
    assert set(record["heldout_exchange_ids"]) == heldout_ids
    assert not heldout_ids & set(record["exchange_ids"])  # never trained on
    weights = load_file(output / "adapter_model.safetensors")
    assert all(".serving." not in key for key in weights)  # only the candidate's own tensors


def _assert_the_gate_saw_what_the_candidate_writes(done: Done) -> None:
    """bot.trainer.visible: the reward model learned from the 16 training ratings ranks the 8
    held-out ones right, so its prediction of the sampled replies' 👍 share counts."""
    evaluation = done.evaluation
    assert evaluation is not None
    scored = {"preference_accuracy", "liked_nll", "reward_margin"}
    assert set(evaluation.base) == scored | {"general_nll"}
    assert done.metrics["reward_auc"] == 1.0 and done.metrics["sampled_replies"] == 4 * 2
    assert set(evaluation.serving) == scored | {"liked_share"}
    assert set(evaluation.candidate) == scored | {"liked_share", "general_nll"}
    for metrics in (evaluation.serving, evaluation.candidate):
        assert 0.0 <= metrics["liked_share"] <= 1.0
    assert evaluation.base["general_nll"] > 0 and evaluation.candidate["general_nll"] > 0


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_kto_subprocess_evaluates_base_serving_and_candidate(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    serving_dir = tmp_path / "serving"
    serving_dir.mkdir()
    serving = TrainingSpec.load(write_spec(serving_dir, tiny_model_dir, ROWS))
    train(serving, lambda event: None)  # an earlier adapter: the one "serving now"

    rows = rated_rows(24)
    # 8 steps of 2: every one of the 16 training rows is used
    spec_path = write_spec(tmp_path, tiny_model_dir, rows, learning_rate=2e-2, max_steps=8)
    params = asdict(GenerationParams(max_new_tokens=6, temperature=0.8))
    general = [[{"role": "user", "content": text}] for text in ("Hello!", "Sing a song.")]
    samples = {"prompts": 4, "per_prompt": 2, "params": params, "min_auc": 0.7}
    samples |= {"general": general}
    with_spec(spec_path, method="kto", serving_lora=str(serving.output_dir), samples=samples)
    code, events, stderr = run_trainer(spec_path)

    assert code == 0, stderr
    start = events[0]
    assert isinstance(start, Start)
    assert (start.method, start.liked, start.disliked) == ("kto", 8, 8)
    assert (start.heldout_liked, start.heldout_disliked) == (4, 4)
    phases = [e.phase for e in events if isinstance(e, Phase)]
    assert phases == ["baseline", "reference", "training", "evaluation", "samples"]
    done = events[-1]
    assert isinstance(done, Done) and done.data["method"] == "kto"
    assert done.metrics["desirable_weight"] == done.metrics["undesirable_weight"] == 1.0
    evaluation = done.evaluation
    assert evaluation is not None and (evaluation.liked, evaluation.disliked) == (4, 4)
    _assert_the_gate_saw_what_the_candidate_writes(done)
    assert evaluation.base["reward_margin"] == 0.0
    assert evaluation.serving != evaluation.base  # the serving LoRA was loaded
    # Trained on 👍 and 👎, the candidate ranks the held-out liked replies first.
    assert evaluation.candidate["preference_accuracy"] == 1.0
    assert evaluation.candidate["reward_margin"] > 0
    _assert_the_candidate_left_out_heldout_and_serving(spec_path, rows)


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
    events: list[Event] = []
    train(TrainingSpec.load(spec_path), events.append)
    start, steps = events[0], [e for e in events if isinstance(e, Step)]
    assert isinstance(start, Start) and start.lm_examples == 4
    assert steps and all(e.lm_loss is not None and e.lm_loss > 0 for e in steps)


def test_an_unknown_method_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec_path = with_spec(write_spec(tmp_path, tiny_model_dir, ROWS), method="dpo")
    out = io.StringIO()
    assert main([str(spec_path)], events=out) == 1
    assert "method must be 'sft' or 'kto'" in json.loads(out.getvalue())["message"]


def test_kto_with_only_disliked_rows_still_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [row(i, f"hi {i}", DISLIKED, False) for i in range(4)]
    spec = TrainingSpec.load(with_spec(write_spec(tmp_path, tiny_model_dir, rows), method="kto"))
    result = train(spec, lambda event: None)
    assert result.metrics["examples"] == 4.0 and result.evaluation is None
    weights = load_file(spec.output_dir / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
