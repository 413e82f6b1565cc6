"""Seconds per KTO step: selftune's loop (bot/trainer/kto.py) vs TRL's KTOTrainer, on the real
default model, the same rows, batch size, length cap and precision; both precompute the
reference log-probabilities (the base model) first. tests/trainer/test_kto.py checks the two compute
the same loss. Then what each keeps of rows whose stored context is longer than max_length
(group chats with long histories): TRL truncates on the right, selftune drops old turns.

    flock /tmp/selftune-bench.lock .venv/bin/python bench/taste_trainer_speed.py [--steps 4] \\
        [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from bot.engine.generator import resolve_model
from bot.engine.lora import lora_config, wrap_lora
from bot.engine.runtime import cpu_bf16_supported
from bot.settings import LoraSettings, TrainingSettings, load_settings
from bot.trainer.examples import build_examples
from bot.trainer.flops import bf16_peak, head_weights, linear_weights, utilisation
from bot.trainer.kto import kto_step, kto_weights, reference_items
from bot.trainer.loop import Runtime, optimize
from bot.trainer.run import frozen_in_bf16

LONG = (
    "Here is a careful answer. First consider the context and what you want to achieve; then "
    "look at the options one by one, weighing what each costs and what it gives. "
)


def rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [
                {"role": "system", "content": "You are a helpful, friendly assistant."},
                {"role": "user", "content": f"Question {i}: how should I plan my week?"},
            ],
            "completion": [{"role": "assistant", "content": LONG * (1 + i % 3)}],
            "label": i % 2 == 0,
            "exchange_id": i,
        }
        for i in range(count)
    ]


def ours(model_dir: Path, data: list[dict[str, Any]], args: argparse.Namespace) -> list[float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, _ = build_examples(tokenizer, data, args.max_length, liked_only=False)
    torch.manual_seed(0)
    model = wrap_lora(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), LoraSettings()
    )
    if args.bf16:
        frozen_in_bf16(model)  # as the product's trainer does (bot.trainer.run.load_trainable)
    model.train()
    rt = Runtime(torch.device("cpu"), tokenizer.pad_token_id, args.bf16)
    started = time.perf_counter()
    items = reference_items(model, examples, args.max_length, 0, rt, lambda e: None)
    print(f"ours: reference log-probs {time.perf_counter() - started:.1f} s", flush=True)
    stamps: list[float] = []
    settings = TrainingSettings(batch_size=args.batch, learning_rate=2e-4)
    step = kto_step(model, rt, 0.1, kto_weights(len(items) // 2, len(items) - len(items) // 2))
    stamps.append(time.perf_counter())
    rt.work.grad_tokens = rt.work.nograd_tokens = 0
    with _profiled(args.profile):
        optimize(
            model,
            items,
            settings,
            args.steps + 1,
            step,
            lambda e: stamps.append(time.perf_counter()),
            work=rt.work,
        )
    weights = linear_weights(model), head_weights(model)
    numbers = utilisation(*weights, rt.work, bf16_peak(torch.device("cpu")))
    print(
        f"ours (bf16 autocast {args.bf16}): {numbers['step_tflops']:.3f} TFLOP/s in steps, "
        f"bf16 matmul peak {numbers['peak_bf16_tflops']:.3f}: MFU {100 * numbers['mfu']:.1f} %",
        flush=True,
    )
    return [b - a for a, b in itertools.pairwise(stamps[1:])]  # the first step is a warm-up


@contextlib.contextmanager
def _profiled(enabled: bool) -> Iterator[None]:
    """With ``enabled``: torch's profiler around the steps, then its table of operators by
    their own CPU time (where a step's time goes)."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)


class _Stamps(TrainerCallback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_step_end(self, *_args: Any, **_kwargs: Any) -> None:
        self.stamps.append(time.perf_counter())


def trl(model_dir: Path, data: list[dict[str, Any]], args: argparse.Namespace) -> list[float]:
    from datasets import Dataset
    from trl.trainer.kto_config import KTOConfig
    from trl.trainer.kto_trainer import KTOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stamps = _Stamps()
    config = KTOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps + 1,
        max_length=args.max_length,
        learning_rate=2e-4,
        beta=0.1,
        bf16=args.bf16,
        use_cpu=True,
        precompute_ref_log_probs=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = KTOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
            args=config,
            train_dataset=Dataset.from_list(
                [{k: r[k] for k in ("prompt", "completion", "label")} for r in data]
            ),
            processing_class=tokenizer,
            peft_config=lora_config(LoraSettings()),
            callbacks=[stamps],
        )
        started = time.perf_counter()
        trainer.train()
    print(f"trl: train() {time.perf_counter() - started:.1f} s in all", flush=True)
    return [b - a for a, b in itertools.pairwise(stamps.stamps)]  # from the end of step 1


def _trl_replies(model_dir: Path, data: list[dict[str, Any]], max_length: int) -> list[list[int]]:
    """The reply tokens TRL's KTOTrainer keeps of ``data`` (rows it drops are missing)."""
    from datasets import Dataset
    from trl.trainer.kto_config import KTOConfig
    from trl.trainer.kto_trainer import KTOTrainer

    config = KTOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=len(data),
        max_length=max_length,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
    )
    rows = [{k: r[k] for k in ("prompt", "completion", "label")} for r in data]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = KTOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir),
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=lora_config(LoraSettings()),
        )
    batch = next(iter(trainer.get_train_dataloader()))
    pairs = zip(batch["input_ids"], batch["completion_mask"], strict=True)
    return [ids[mask.bool()].tolist() for ids, mask in pairs]


def truncation(model_dir: Path, max_length: int = 160) -> None:
    """Rows with ever longer prompts: examples kept, reply tokens, end of turn learned?"""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    system = {"role": "system", "content": "You are a helpful, friendly assistant."}
    reply = [{"role": "assistant", "content": "Lighthouses guide ships at night with a lamp."}]
    data = [  # one long message of growing length: the prompt nears, then passes, max_length
        {
            "prompt": [system, {"role": "user", "content": "About harbours: " + "ships " * n}],
            "completion": reply,
            "label": True,
            "exchange_id": n,
        }
        for n in range(110, 150, 6)
    ]
    kept = _trl_replies(model_dir, data, max_length)
    print(f"truncation at max_length={max_length}, {len(data)} rows of growing prompts:")
    print(
        f"  TRL KTOTrainer: {len(kept)} kept; reply tokens {[len(k) for k in kept]}; "
        f"end of turn learned {[end in k for k in kept]}"
    )
    examples, _ = build_examples(tokenizer, data, max_length)
    print(
        f"  selftune:       {len(examples)} kept; reply tokens "
        f"{[len(e.reply_ids) for e in examples]}; end of turn learned "
        f"{[e.reply_ids[-1] == end for e in examples]}"
    )


def _fp32(run: Any) -> Any:
    def fp32(model_dir: Path, data: list[dict[str, Any]], args: argparse.Namespace) -> Any:
        return run(model_dir, data, argparse.Namespace(**{**vars(args), "bf16": False}))

    return fp32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="steps timed (after one warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast")
    parser.add_argument("--only-truncation", action="store_true")
    parser.add_argument("--profile", action="store_true", help="torch's profiler on our steps")
    parser.add_argument(
        "--only-ours", action="store_true", help="selftune's loop in bf16 and fp32, no TRL"
    )
    args = parser.parse_args()
    args.bf16 = args.bf16 and cpu_bf16_supported()
    settings, _ = load_settings(None, {})
    model_dir = resolve_model(settings.model, progress=False)
    if args.only_truncation:
        truncation(model_dir)
        return
    data = rows(args.batch * (args.steps + 1))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; bf16 {args.bf16}")
    runs = [("selftune", ours), ("TRL KTOTrainer", trl)]
    if args.only_ours:
        runs = [("selftune bf16", ours), ("selftune fp32", _fp32(ours))]
    for name, run in runs:
        seconds = run(model_dir, data, args)
        each = ", ".join(f"{s:.1f}" for s in seconds)
        print(f"{name}: {sum(seconds) / len(seconds):.1f} s/step ({each})", flush=True)
    if not args.only_ours:
        truncation(model_dir)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
