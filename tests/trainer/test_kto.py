"""KTO on the tiny model: the loss equals TRL's KTOTrainer on the same batch; weights balance;
mismatched pairs keep the reply; training moves liked replies up and disliked ones down."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from bot.engine.lora import lora_config, wrap_lora
from bot.settings import LoraSettings, TrainingSettings
from bot.trainer.examples import IGNORE, Example, build_examples
from bot.trainer.kto import (
    kto_losses,
    kto_step,
    kto_weights,
    mismatched_pairs,
    reference_items,
)
from bot.trainer.loop import Runtime, optimize, score, sequence_logps

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
    from trl import KTOConfig, KTOTrainer

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
    events: list[dict[str, Any]] = []
    items = reference_items(model, examples, 64, 0, rt, events.append)
    settings = TrainingSettings(batch_size=8, learning_rate=2e-2, epochs=6.0)
    step = kto_step(model, rt, beta=0.5, weights=kto_weights(8, 8))
    losses = optimize(model, items, settings, 12, step, events.append)
    assert events[0]["phase"] == "reference" and events[-1]["step"] == 12
    assert "kl" in events[-1] and losses[-1] < losses[0]
    ratios = [s - i.ref_logp for (s, _), i in zip(score(model, examples, rt), items, strict=True)]
    liked = [r for r, ex in zip(ratios, examples, strict=True) if ex.label]
    disliked = [r for r, ex in zip(ratios, examples, strict=True) if not ex.label]
    assert min(liked) > 0 > max(disliked)
