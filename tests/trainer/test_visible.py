"""The gate's look at what a candidate writes (bot.trainer.visible): the reward model learned
from ratings, and the replies sampled from the adapter (the tiny model)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from bot.engine.lora import wrap_lora
from bot.generation.template import chat_ids, stop_ids
from bot.learning.protocol import SampleSpec
from bot.settings import LoraSettings
from bot.trainer.examples import IGNORE, Example, end_of_turn_id
from bot.trainer.loop import Runtime, forward
from bot.trainer.scoring import baseline
from bot.trainer.visible import (
    Ends,
    RewardModel,
    VisibleCheck,
    auc,
    base_features,
    generate,
    nll_per_token,
    prompts_of,
    reply_features,
)
from bot.types import GenerationParams


def test_the_reward_model_learns_what_separates_the_ratings() -> None:
    torch.manual_seed(0)
    features = torch.randn(60, 8)
    labels = [bool(x > 0.3) for x in features[:, 2].tolist()]  # one direction decides
    judge = RewardModel.fit(features, labels)
    assert judge is not None
    fresh = torch.randn(200, 8)
    truth = [bool(x > 0.3) for x in fresh[:, 2].tolist()]
    predicted = judge.predict(fresh)
    ranked = auc(predicted.tolist(), truth)
    assert ranked is not None and ranked > 0.95
    right = sum((p > 0.5) == t for p, t in zip(predicted.tolist(), truth, strict=True))
    assert right / len(truth) > 0.85  # 60 rows, 8 features, an L2 penalty: most, not all
    # Without both labels there is nothing to learn; without both, nothing to rank.
    assert RewardModel.fit(features, [True] * 60) is None
    assert auc([0.1, 0.2], [True, True]) is None
    assert auc([0.5, 0.5, 0.1], [True, False, False]) == pytest.approx(0.75)  # ties half


def test_prompts_are_the_distinct_held_out_ones_in_order() -> None:
    rows = [
        Example([1, 2, 9], [IGNORE, IGNORE, 9], prompt_len=2),
        Example([1, 2, 8], [IGNORE, IGNORE, 8], prompt_len=2),
        Example([3, 7], [IGNORE, 7], prompt_len=1),
    ]
    assert prompts_of(rows, 5) == [[1, 2], [3]]
    assert prompts_of(rows, 1) == [[1, 2]]
    assert nll_per_token([(-6.0, 3), (-2.0, 1)]) == 2.0 and nll_per_token([]) is None


@pytest.fixture
def model(tiny_model_dir: Path) -> Any:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return wrap_lora(base, LoraSettings())


def _ends(tokenizer: Any, model: Any) -> Ends:
    end = end_of_turn_id(tokenizer)
    assert end is not None
    return Ends(stop_ids(tokenizer, model.generation_config.eos_token_id) | {end}, end)


def test_sampled_replies_are_examples_that_end_their_turn(tokenizer: Any, model: Any) -> None:
    rt = Runtime(torch.device("cpu"), tokenizer.pad_token_id or 0, bf16=False)
    prompts = [
        chat_ids(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
        for text in ("Tell me about the sea.", "Hi")
    ]
    spec = SampleSpec(2, 3, GenerationParams(max_new_tokens=5, temperature=1.0))
    ends = _ends(tokenizer, model)
    drawn = torch.random.get_rng_state()
    model.set_attn_implementation("sdpa")  # as a long pass before it may leave it
    sampled = generate(model, prompts, spec, ends, rt, greedy=False, seed=1)
    assert model.config._attn_implementation == "eager"  # its own choice, on either side
    assert torch.equal(torch.random.get_rng_state(), drawn)  # training draws what it would have
    assert [ex.input_ids[: ex.prompt_len] for ex in sampled] == [prompts[0]] * 3 + [prompts[1]] * 3
    for example in sampled:
        reply = example.reply_ids
        assert 1 <= len(reply) <= 6 and reply[-1] == ends.end_of_turn
        assert not set(reply[:-1]) & ends.stop  # cut at the first end
        assert [t for t in example.labels if t != IGNORE] == reply
    assert generate(model, prompts, spec, ends, rt, greedy=False, seed=1) == sampled  # seeded
    greedy = generate(model, prompts, spec, ends, rt, greedy=True, seed=5)
    again = generate(model, prompts, spec, ends, rt, greedy=True, seed=6)
    assert len(greedy) == 2 and greedy == again
    # A bot that answers greedily has its candidate answer greedily too: one reply a prompt.
    cold = SampleSpec(2, 3, GenerationParams(max_new_tokens=5, temperature=0.0))
    assert generate(model, prompts, cold, ends, rt, greedy=False, seed=1) == greedy
    # The reward model's features: one row per reply, from the base model.
    features = base_features(model, sampled, rt)
    assert len(features) == 6 and features[0].shape == (3 * model.config.hidden_size,)
    passed = forward(model, sampled[:2], rt)
    assert reply_features(passed).shape == (2, 3 * model.config.hidden_size)


def test_the_look_before_training_leaves_the_fresh_adapter_on_and_trainable(
    tokenizer: Any, model: Any
) -> None:
    """A young bot's first run (no serving LoRA): the base answers inside the baseline's own
    ``disable_adapter``, whose nested uses (the reward model's features) must not switch the
    adapter being trained on early or leave it off or frozen afterwards."""
    rt = Runtime(torch.device("cpu"), tokenizer.pad_token_id or 0, bf16=False)
    prompts = [
        chat_ids(tokenizer, [{"role": "user", "content": t}], add_generation_prompt=True)
        for t in ("Tell me about the sea.", "Hi", "Where is the boat?", "Sing.")
    ]
    heldout = [
        Example([*ids, 9, 10], [IGNORE] * len(ids) + [9, 10], label=i % 2 == 0, prompt_len=len(ids))
        for i, ids in enumerate(prompts)
    ]
    spec = SampleSpec(2, 2, GenerationParams(max_new_tokens=4, temperature=1.0))
    check = VisibleCheck(spec, _ends(tokenizer, model), rt, seed=0, general=prompts[:2])
    model.train()
    before = baseline(model, heldout, rt, None, check)
    assert len(before.base) == 4 and len(check.heldout.features()) == 4
    assert model.get_model_status().enabled is True
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".default." in n for n in trainable)
    assert model.training  # back in training mode for the steps
    # The damage check: the base's greedy replies to the general prompts, scored again under
    # the candidate. A fresh LoRA (B = 0) is the base: no rise at all.
    found = check.numbers(model, heldout, heldout)
    assert found.base["general_nll"] > 0
    assert found.candidate["general_nll"] == pytest.approx(found.base["general_nll"], rel=1e-6)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    moved = check.numbers(model, heldout, heldout)
    assert moved.base == found.base and moved.candidate["general_nll"] != found.base["general_nll"]


def test_an_sft_run_is_checked_for_damage_without_sampling(tokenizer: Any, model: Any) -> None:
    """No 👎 to learn a reward model from (SFT), or gate.sample_prompts = 0: nothing is
    sampled, but the base's replies to the general prompts are still checked."""
    rt = Runtime(torch.device("cpu"), tokenizer.pad_token_id or 0, bf16=False)
    prompts = [
        chat_ids(tokenizer, [{"role": "user", "content": t}], add_generation_prompt=True)
        for t in ("Tell me about the sea.", "Hi")
    ]
    heldout = [
        Example([*ids, 9, 10], [IGNORE] * len(ids) + [9, 10], label=True, prompt_len=len(ids))
        for ids in prompts
    ]
    spec = SampleSpec(2, 2, GenerationParams(max_new_tokens=4, temperature=1.0))
    for check in (
        VisibleCheck(spec, _ends(tokenizer, model), rt, seed=0, general=prompts, rated=False),
        VisibleCheck(replace(spec, prompts=0), _ends(tokenizer, model), rt, 0, prompts),
    ):
        baseline(model, heldout, rt, None, check)
        found = check.numbers(model, heldout, heldout)
        assert not check.sampling and set(found.candidate) == {"general_nll"}
        assert set(found.base) == {"general_nll"} and not found.serving and not found.info
