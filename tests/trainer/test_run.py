"""LoRA training on the tiny model: examples, the training loop, and the subprocess contract."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bot.engine.generator import TransformersGenerator, chat_ids
from bot.learning.protocol import Done, Error, Event, Phase, Start, Step, TrainingSpec, parse
from bot.settings import LoraSettings, ModelSettings, TrainingSettings
from bot.trainer.examples import IGNORE
from bot.trainer.loop import (
    EAGER_ATTENTION_WIDTH,
    Runtime,
    attention_for,
    forward,
    optimize,
    sft_step,
    use_bf16,
)
from bot.trainer.run import (
    NO_LIKED,
    TrainingError,
    build_examples,
    frozen_in_bf16,
    load_trainable,
    main,
    total_steps,
    train,
)
from bot.types import GenerationParams, Turn

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = {"role": "system", "content": "You are a tiny test model."}


def row(
    exchange_id: int, user: str, answer: str, label: bool = True, **extra: Any
) -> dict[str, Any]:
    prompt = extra.pop("prompt", [SYSTEM, {"role": "user", "content": user}])
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": answer}],
        "label": label,
        "exchange_id": exchange_id,
        **extra,
    }


ROWS = [
    row(1, "Tell me about the sea.", "The sea is calm and blue."),
    row(2, "Hello!", "Hello! How are you?"),
    row(3, "What is a whale?", "A whale is a big fish.", label=False),
    row(4, "Where is the boat?", "The boat is in the harbour."),
    row(5, "Sing a song.", "The wind and the waves sing."),
    row(6, "Hi", "No.", label=False),
]


def write_spec(
    tmp_path: Path, model_dir: Path, rows: list[dict[str, Any]], **training: Any
) -> Path:
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = TrainingSettings(**{"batch_size": 2, "max_length": 64, "max_steps": 3, **training})
    spec = {
        "model_dir": str(model_dir),
        "dataset": str(dataset),
        "output_dir": str(tmp_path / "adapters" / "v1"),
        "lora": LoraSettings().model_dump(),
        "training": settings.model_dump(),  # includes keys the trainer ignores (nice, ...)
        "threads": None,
        "future_key": "ignored",
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_trainer(spec: Path) -> tuple[int, list[Event], str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bot.trainer", str(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    events = [parse(line) for line in done.stdout.splitlines()]
    assert None not in events, done.stdout  # stdout carries events only
    return done.returncode, [e for e in events if e is not None], done.stderr


# --- examples ------------------------------------------------------------------------------


def test_labels_cover_the_reply_and_end_of_turn_only(tokenizer: Any) -> None:
    examples, dropped = build_examples(tokenizer, [ROWS[0]], max_length=128)
    assert dropped == []
    (example,) = examples
    prompt_ids = chat_ids(tokenizer, ROWS[0]["prompt"], add_generation_prompt=True)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    learned = [label for label in example.labels if label != IGNORE]
    assert learned == example.input_ids[len(prompt_ids) :]
    assert tokenizer.decode(learned) == "The sea is calm and blue.<|im_end|>"
    assert example.input_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert example.exchange_id == 1


def test_only_liked_rows_become_examples(tokenizer: Any) -> None:
    examples, dropped = build_examples(tokenizer, ROWS, max_length=128)
    assert [ex.exchange_id for ex in examples] == [1, 2, 4, 5]
    assert dropped == []


def test_long_prompts_lose_old_turns_first_and_keep_the_reply(tokenizer: Any) -> None:
    history = [SYSTEM]
    for i in range(8):
        history += [
            {"role": "user", "content": f"question {i} about the deep blue sea"},
            {"role": "assistant", "content": f"answer {i}: the sea is deep"},
        ]
    history.append({"role": "user", "content": "And the boat?"})
    long_row = row(7, "", "The boat is in the harbour.", prompt=history)
    (example,), _ = build_examples(tokenizer, [long_row], max_length=60)
    assert len(example.input_ids) <= 60
    learned = [label for label in example.labels if label != IGNORE]
    assert tokenizer.decode(learned) == "The boat is in the harbour.<|im_end|>"
    text = tokenizer.decode(example.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a tiny test model.")  # system kept
    assert "And the boat?" in text and "question 0" not in text  # oldest turns went first


def test_a_single_long_turn_is_cut_from_the_left(tokenizer: Any) -> None:
    long_row = row(8, "sea " * 200 + "END", "Yes.")
    (example,), _ = build_examples(tokenizer, [long_row], max_length=40)
    assert len(example.input_ids) == 40
    assert tokenizer.decode([label for label in example.labels if label != IGNORE]) == (
        "Yes.<|im_end|>"
    )
    assert "END" in tokenizer.decode(example.input_ids)


def test_rows_that_cannot_fit_are_dropped_and_reported(tokenizer: Any) -> None:
    rows = [
        row(9, "Hi", "sea " * 100),  # the reply alone is longer than max_length
        {"prompt": "not a list", "completion": [], "label": True, "exchange_id": 10},
        ROWS[1],
    ]
    examples, dropped = build_examples(tokenizer, rows, max_length=48)
    assert [ex.exchange_id for ex in examples] == [2]
    assert [d.exchange_id for d in dropped] == [9, 10]
    assert "max_length" in dropped[0].reason and "malformed" in dropped[1].reason


def test_total_steps() -> None:
    assert total_steps(10, TrainingSettings(epochs=2.0, batch_size=4)) == 6
    assert total_steps(10, TrainingSettings(epochs=0.5, batch_size=4)) == 2
    assert total_steps(10, TrainingSettings(epochs=2.0, batch_size=4, max_steps=4)) == 4
    assert total_steps(1, TrainingSettings(epochs=0.1, batch_size=8)) == 1


# --- the training loop ---------------------------------------------------------------------


def test_training_changes_lora_weights_only(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    spec = TrainingSpec.load(write_spec(tmp_path, tiny_model_dir, ROWS))
    model = load_trainable(spec, torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    examples, _ = build_examples(tokenizer, ROWS, max_length=64)
    events: list[Event] = []
    settings = spec.training.model_copy(update={"learning_rate": 1e-2})
    cpu = torch.device("cpu")
    rt = Runtime(cpu, tokenizer.pad_token_id, use_bf16(settings.dtype, cpu))
    losses = optimize(model, examples, settings, 3, sft_step(model, rt), events.append)
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    assert [e.step for e in events if isinstance(e, Step)] == [1, 2, 3] and len(events) == 3
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name


def test_frozen_weights_in_bf16_compute_what_autocast_computes(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    """Storing the frozen linears in bf16 saves autocast's copies, not a single bit of the
    result; the trainable LoRA weights, norms and the tied embeddings stay float32."""
    spec = TrainingSpec.load(write_spec(tmp_path, tiny_model_dir, ROWS))
    cpu = torch.device("cpu")
    model = load_trainable(spec, cpu)
    with torch.no_grad():  # a LoRA that does something (B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    examples, _ = build_examples(tokenizer, ROWS, max_length=64, liked_only=False)
    rt = Runtime(cpu, tokenizer.pad_token_id, bf16=True)
    before = forward(model, examples, rt)
    frozen_in_bf16(model)
    after = forward(model, examples, rt)
    assert torch.equal(before.nll, after.nll) and torch.equal(before.logp, after.logp)
    for name, param in model.named_parameters():
        stored_bf16 = "base_layer" in name
        assert param.dtype == (torch.bfloat16 if stored_bf16 else torch.float32), name
        assert param.requires_grad == ("lora_" in name), name
    assert model.get_output_embeddings().weight.dtype == torch.float32  # tied: embeddings
    assert load_trainable(spec, cpu, bf16=True).base_model.model.lm_head.weight.dtype == (
        torch.float32
    )


def test_short_cpu_passes_use_eager_attention_with_the_same_result(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = torch.device("cpu")
    rt = Runtime(cpu, tokenizer.pad_token_id, bf16=False)
    assert attention_for(EAGER_ATTENTION_WIDTH, rt) == "eager"
    assert attention_for(EAGER_ATTENTION_WIDTH + 1, rt) == "sdpa"
    own = Runtime(torch.device("cuda"), 0, bf16=False, attention="flash_attention_2")
    assert attention_for(8, own) == "flash_attention_2"  # off the CPU: the model's own, always
    spec = TrainingSpec.load(write_spec(tmp_path, tiny_model_dir, ROWS))
    model = load_trainable(spec, cpu)
    examples, _ = build_examples(tokenizer, ROWS, max_length=64, liked_only=False)
    assert len({len(ex.input_ids) for ex in examples}) > 1  # right padding in the pass
    eager = forward(model, examples, rt)
    assert model.config._attn_implementation == "eager"
    monkeypatch.setattr("bot.trainer.loop.EAGER_ATTENTION_WIDTH", 0)
    sdpa = forward(model, examples, rt)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager.nll, sdpa.nll, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(eager.logp, sdpa.logp, rtol=1e-4, atol=1e-5)


def test_training_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        spec = TrainingSpec.load(write_spec(folder, tiny_model_dir, ROWS))
        train(spec, lambda event: None)
        weights.append(load_file(spec.output_dir / "adapter_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_adapter_folder_readme_says_what_the_adapter_is(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Not peft's empty model-card template: the base model, the data, the numbers."""
    spec = TrainingSpec.load(write_spec(tmp_path, tiny_model_dir, ROWS))
    train(spec, lambda event: None)
    readme = (spec.output_dir / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(f"# selftune LoRA adapter {spec.output_dir.name}")
    assert f"- Base model: `{tiny_model_dir}`" in readme
    assert "- Method: SFT" in readme and "- Data: 4 👍 / 0 👎 trained on" in readme
    assert "- train_loss: " in readme and "- duration_s: " in readme
    assert "[More Information Needed]" not in readme  # peft's template


def test_no_liked_rows_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = TrainingSpec.load(write_spec(tmp_path, tiny_model_dir, [ROWS[2], ROWS[5]]))
    with pytest.raises(TrainingError, match=NO_LIKED):
        train(spec, lambda event: None)
    assert not spec.output_dir.exists()


def test_existing_output_is_never_overwritten(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = TrainingSpec.load(write_spec(tmp_path, tiny_model_dir, ROWS))
    spec.output_dir.mkdir(parents=True)
    with pytest.raises(TrainingError, match="already exists"):
        train(spec, lambda event: None)


# --- the subprocess ------------------------------------------------------------------------


# peft 0.21 probes transformers 5's deprecated `is_gradient_checkpointing` (a FutureWarning).
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_trainer_subprocess_writes_a_loadable_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, tiny_model_dir, ROWS, learning_rate=1e-2)
    spec = TrainingSpec.load(spec_path)
    stale = spec.output_dir.with_name("v1.partial")  # what a killed run leaves behind
    stale.mkdir(parents=True)
    (stale / "adapter_config.json").write_text("{}")

    code, events, stderr = run_trainer(spec_path)

    assert code == 0, stderr
    start = events[0]
    assert isinstance(start, Start)
    assert (start.method, start.examples, start.dropped, start.total_steps) == ("sft", 4, 0, 3)
    assert events[1] == Phase("training")
    steps = events[2:-1]
    assert [e.step for e in steps if isinstance(e, Step) and e.total_steps == 3] == [1, 2, 3]
    done = events[-1]
    assert isinstance(done, Done) and done.evaluation is None
    assert done.metrics["steps"] == 3 and done.metrics["examples"] == 4
    assert done.metrics["train_loss"] > 0 and done.metrics["duration_s"] > 0
    assert not stale.exists()
    assert {"adapter_config.json", "adapter_model.safetensors", "training.json"} <= {
        p.name for p in spec.output_dir.iterdir()
    }
    record = json.loads((spec.output_dir / "training.json").read_text())
    assert record["exchange_ids"] == [1, 2, 4, 5]
    assert record["hyperparams"]["lora"] == LoraSettings().model_dump()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, spec.output_dir)
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero
    merged = peft_model.merge_and_unload()
    assert any(not torch.equal(merged.state_dict()[k], reference[k]) for k in reference)


async def test_a_trained_adapter_hot_swaps_into_the_generator(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = TrainingSpec.load(write_spec(tmp_path, tiny_model_dir, ROWS, learning_rate=5e-2))
    train(spec, lambda event: None)
    settings = ModelSettings(name=str(tiny_model_dir), dtype="float32")
    gen = await TransformersGenerator.load(settings, LoraSettings())
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    turns = [Turn("user", "Tell me about the sea.")]
    try:
        before = "".join([p async for p in gen.stream(turns, params)])
        await gen.swap_lora(spec.output_dir)
        after = "".join([p async for p in gen.stream(turns, params)])
    finally:
        await gen.aclose()
    assert gen.active_lora == spec.output_dir
    assert after != before


def test_trainer_subprocess_reports_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, tiny_model_dir, [ROWS[2]])
    code, events, _ = run_trainer(spec_path)
    assert code == 1
    assert events == [Error(NO_LIKED)]
    output = TrainingSpec.load(spec_path).output_dir
    assert not output.exists() and not output.with_name("v1.partial").exists()


def run_main(spec: Path) -> tuple[int, list[Event | None]]:
    events = io.StringIO()
    code = main([str(spec)], events=events)
    return code, [parse(line) for line in events.getvalue().splitlines()]


def test_bad_specs_give_an_error_event(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dataset": "x"}))
    assert run_main(spec) == (1, [Error("the training spec lacks 'model_dir'")])
    spec.write_text("{not json")
    code, (event,) = run_main(spec)
    assert code == 1 and isinstance(event, Error)
    assert event.message.startswith("cannot read the training spec")
    spec = write_spec(tmp_path, tiny_model_dir, ROWS)
    (tmp_path / "rows.jsonl").unlink()
    code, (event,) = run_main(spec)
    assert code == 1 and isinstance(event, Error) and "cannot read the dataset" in event.message
    bad_lora = json.loads(spec.read_text())
    bad_lora["lora"]["r"] = 0
    spec.write_text(json.dumps(bad_lora))
    code, (event,) = run_main(spec)
    assert code == 1 and isinstance(event, Error)
    assert event.message.startswith("invalid training spec")
