"""LoRA fine-tuning on rated exchanges, run as a subprocess: ``python -m bot.trainer SPEC.json``.

The orchestrator (bot.learning.finetune) picks the method: KTO on 👍 and 👎 (bot.trainer.kto,
with the 👍 replies' NLL next to it: ``training.sft_weight``), or SFT on the 👍 when there are too
few 👎. Either way the loss covers the assistant reply and its end-of-turn token only; preference
pairs (``pairs_dataset``) add a DPO term (bot.trainer.pairs) and an optional self-supervised term
(bot.trainer.lm) can join in. When ``max_steps`` stops a run before an epoch, only the rows its
steps use are scored, trained on and recorded (``trained_exchange_ids``); the steps' share of
the bf16 matmul peak measured in the same run is reported as ``mfu`` (bot.trainer.flops).
Rows marked ``"split": "heldout"`` are never trained on: they score the base model, the adapter
serving now and the new one (bot.trainer.scoring), and the orchestrator's gate decides with them.

Progress goes to stdout as one JSON event per line (bot.learning.protocol: ``Start``, ``Phase``,
``Step``..., then ``Done`` or ``Error``); human logs go to stderr. The adapter is written to
``<output_dir>.partial`` and renamed to ``output_dir`` at the very end, so a killed trainer
never leaves a complete-looking adapter behind.

A compact torch loop rather than TRL's trainers, measured on the reference CPU (2 cores,
SmolLM2-135M, batch 8, ≤ 256 tokens, bf16 autocast): SFT 9.6 s/step here vs 16.5 with
SFTTrainer; KTO 6.1 s/step here vs 6.5 with KTOTrainer (bench/taste_trainer_speed.py), the same
loss (tests/trainer/test_kto.py). What decides for KTO is truncation: KTOTrainer cuts long rows on
the right, so a stored context near max_length loses the reply's end-of-turn token or the whole row
(of 7 growing prompts at max_length 160 it kept 4, two without end of turn), while here old
turns and then the prompt's left end go first and every reply is learned whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.engine.lora import wrap_lora
from bot.engine.runtime import pick_device
from bot.errors import TrainingError
from bot.generation.template import chat_ids, stop_ids
from bot.learning.evaluation import Evaluation
from bot.learning.protocol import Done, Error, Event, Phase, Start, TrainingSpec
from bot.settings import TrainingSettings
from bot.trainer.anchor import disputed_tokens
from bot.trainer.examples import NO_LIKED, Example, build_examples, end_of_turn_id, load_rows
from bot.trainer.flops import bf16_peak, head_weights, linear_weights, utilisation
from bot.trainer.inputs import Prepared, data_report, prepare
from bot.trainer.kto import kto_step, kto_weights, reference_items
from bot.trainer.lm import lm_term
from bot.trainer.loop import (
    Emit,
    Runtime,
    optimize,
    rows_used,
    score,
    sft_step,
    total_steps,
    use_bf16,
)
from bot.trainer.pairs import pair_term, reference_pairs
from bot.trainer.scoring import Baseline, baseline, evaluation
from bot.trainer.visible import Ends, VisibleCheck

__all__ = [
    "NO_LIKED",
    "Example",
    "TrainOutput",
    "TrainingError",
    "TrainingSpec",
    "build_examples",
    "frozen_in_bf16",
    "load_rows",
    "load_trainable",
    "main",
    "total_steps",
    "train",
]

log = logging.getLogger("bot.trainer")


@dataclass
class TrainOutput:
    """What ``train`` returns: the child's side of the ``Done`` event."""

    metrics: dict[str, float]
    evaluation: Evaluation | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def done(self) -> Done:
        return Done(self.metrics, self.evaluation, self.data)


def train(spec: TrainingSpec, emit: Emit) -> TrainOutput:
    """Train a LoRA as ``spec`` says, evaluate it on the held-out rows, and save it.

    Emits ``Start``, ``Phase`` and ``Step`` events; the caller emits ``Done``. Raises
    TrainingError.
    """
    started = time.monotonic()
    partial = _prepare_output(spec.output_dir)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    tokenizer = _load(AutoTokenizer, spec.model_dir)
    data = prepare(tokenizer, spec)
    total = total_steps(len(data.train), spec.training)
    # Only the rows the steps will see are scored, trained on and recorded as trained.
    data.train = rows_used(data.train, spec.training.batch_size, total, spec.training.seed)
    emit(Start(spec.method, len(data.train), total, len(data.dropped), **data.counts()))
    device = pick_device(spec.training.device)
    bf16 = use_bf16(spec.training.dtype, device)
    model = load_trainable(spec, device, bf16)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rt = Runtime(device, pad_id, bf16, model.config._attn_implementation)
    before: Baseline | None = None
    check = _visible_check(spec, data, tokenizer, model, rt)
    if data.heldout:
        emit(Phase("baseline", heldout=len(data.heldout)))
        before = baseline(model, data.heldout, rt, spec.serving_lora, check)
    free = _freed(spec, data.train, tokenizer)
    losses, extra = _fit(model, data, spec, total, rt, emit, check, free)
    metrics = {"train_loss": sum(losses) / len(losses), "final_loss": losses[-1]} | {
        "steps": float(total),
        "examples": float(len(data.train)),
        "dropped": float(len(data.dropped)),
        **extra,
    }
    model.save_pretrained(partial, save_embedding_layers=False)
    trained = {
        "trained_exchange_ids": [ex.exchange_id for ex in data.train],
        # which tokens the anchor left to the ratings, as text
        "anchor_free": [tokenizer.decode([token]) for token in free],
    }
    result = TrainOutput(
        metrics, data=data_report(spec, data) | trained | {"losses": [round(x, 6) for x in losses]}
    )
    if before is not None:
        result.evaluation = _evaluate(model, data, before, check, spec, rt, emit, metrics)
    metrics["duration_s"] = round(time.monotonic() - started, 3)
    save_record(partial, spec, result, data)
    return result


def _evaluate(
    model: Any,
    data: Prepared,
    before: Baseline,
    check: VisibleCheck | None,
    spec: TrainingSpec,
    rt: Runtime,
    emit: Emit,
    metrics: dict[str, float],
) -> Evaluation:
    """The candidate on the held-out rows, and (``check``) what it writes to their prompts; the
    reward model's numbers join ``metrics``."""
    emit(Phase("evaluation", heldout=len(data.heldout)))
    candidate = score(model, data.heldout, rt)
    scored = evaluation(data.heldout, before, candidate, spec.training.beta)
    if check is None:
        return scored
    emit(Phase("samples", heldout=len(data.heldout)))
    found = check.numbers(model, data.heldout, data.train)
    metrics.update(found.info)
    return replace(
        scored,
        base=scored.base | found.base,
        serving=scored.serving | found.serving,
        candidate=scored.candidate | found.candidate,
    )


def _visible_check(
    spec: TrainingSpec, data: Prepared, tokenizer: Any, model: Any, rt: Runtime
) -> VisibleCheck | None:
    """The gate's look at the candidate's replies (bot.trainer.visible), when the spec asks for
    it and the run is judged (rows held out): the damage on the general prompts for any run;
    the reward model's look at sampled replies for KTO (👍 and 👎 to learn it from)."""
    end = end_of_turn_id(tokenizer)
    if spec.samples is None or not data.heldout or end is None:
        return None
    stop = stop_ids(tokenizer, model.generation_config.eos_token_id) | {end}
    general = [chat_ids(tokenizer, m, add_generation_prompt=True) for m in spec.samples.general]
    rated = spec.method == "kto"
    return VisibleCheck(spec.samples, Ends(stop, end), rt, spec.training.seed, general, rated)


def _fit(
    model: Any,
    data: Prepared,
    spec: TrainingSpec,
    total: int,
    rt: Runtime,
    emit: Emit,
    check: VisibleCheck | None = None,
    free: list[int] | None = None,
) -> tuple[list[float], dict[str, float]]:
    """Run the chosen objective on the rows its steps use (plus the optional self-supervised
    and pairwise terms); report the steps' share of the bf16 peak. ``free``: the token ids
    the anchor leaves to the ratings (``training.anchor_free``)."""
    cfg = spec.training
    extra = _extra_terms(model, data, cfg, total, rt)
    numbers: dict[str, float] = {}
    items: list[Any]
    if spec.method == "kto":
        liked = sum(1 for ex in data.train if ex.label)
        weights = kto_weights(liked, len(data.train) - liked)
        anchor = cfg.anchor_weight > 0
        see = check.train if check is not None else None
        ids = torch.tensor(free, dtype=torch.long) if free else None
        items = reference_items(
            model, data.train, cfg.max_length, cfg.seed, rt, emit, anchor, see, ids
        )
        step = kto_step(model, rt, cfg.beta, weights, cfg.sft_weight, cfg.anchor_weight, ids)
        numbers = {"desirable_weight": weights[0], "undesirable_weight": weights[1]}
    else:
        items, step = list(data.train), sft_step(model, rt)
    emit(Phase("training"))
    peak = bf16_peak(rt.device)
    rt.work.grad_tokens = rt.work.nograd_tokens = 0  # the steps' own work from here
    rt.work.grad_headless = rt.work.nograd_headless = 0
    losses = optimize(model, items, cfg, total, step, emit, extra, rt.work)
    weights = linear_weights(model), head_weights(model)
    return losses, numbers | utilisation(*weights, rt.work, peak)


def _freed(spec: TrainingSpec, train: Sequence[Example], tokenizer: Any) -> list[int]:
    """What the anchor of a KTO run leaves to the ratings (nothing under SFT: no anchor)."""
    if spec.method != "kto":
        return []
    return anchor_free(spec.training, train, end_of_turn_id(tokenizer))


def anchor_free(cfg: TrainingSettings, train: Sequence[Example], end: int | None) -> list[int]:
    """The token ids the anchor leaves to the ratings: none, the end of turn (how long replies
    are), or that and the tokens the 👍 and 👎 replies use at different rates."""
    if cfg.anchor_free == "nothing" or cfg.anchor_weight == 0:
        return []
    ends = [end] if end is not None else []
    if cfg.anchor_free == "end":
        return ends
    return ends + [t for t in disputed_tokens(train) if t not in ends]


def _extra_terms(
    model: Any, data: Prepared, cfg: TrainingSettings, total: int, rt: Runtime
) -> Callable[[], dict[str, float]] | None:
    """The terms that add their gradient after each step's: self-supervised, pairwise."""
    terms = []
    if data.lm:
        terms.append(lm_term(model, data.lm, cfg.lm_weight, cfg.batch_size, cfg.seed, rt))
    if data.pairs:
        size = max(1, cfg.batch_size // 2)
        used = reference_pairs(model, rows_used(data.pairs, size, total, cfg.seed), rt)
        terms.append(pair_term(model, used, cfg.pair_weight, cfg.beta, size, cfg.seed, rt))
    if not terms:
        return None

    def extra() -> dict[str, float]:
        stats: dict[str, float] = {}
        for term in terms:
            stats.update(term())
        return stats

    return extra


def load_trainable(spec: TrainingSpec, device: torch.device, bf16: bool = False) -> Any:
    """The base model in float32 (autocast does bf16 where it pays) with a fresh LoRA adapter.

    With ``bf16`` (the run computes under bf16 autocast) the frozen linear weights are stored
    in bfloat16: autocast would round them to the same values on every pass (they need no
    gradient, so it does not cache the copy), which was ~5 % of a CPU step. The LoRA weights,
    norms and embeddings (with a tied LM head) stay float32."""
    torch.manual_seed(spec.training.seed)  # the adapter's A init and dropout follow the seed
    base = _load(AutoModelForCausalLM, spec.model_dir, dtype=torch.float32)
    model = wrap_lora(base.to(device), spec.lora)
    if bf16:
        frozen_in_bf16(model)
    model.train()
    return model


def frozen_in_bf16(model: Any) -> None:
    """Store the frozen linear weights of a LoRA-wrapped ``model`` in bfloat16 (for bf16
    autocast: the same values it would round them to on every pass), but not a head tied to
    the input embeddings."""
    embeddings = model.get_input_embeddings().weight
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module.weight is embeddings:
            continue
        if not module.weight.requires_grad:
            module.weight.data = module.weight.data.to(torch.bfloat16)


def _prepare_output(output_dir: Path) -> Path:
    """Refuse to overwrite a finished adapter; clear what a killed run left in ``.partial``."""
    if output_dir.exists():
        raise TrainingError(f"{output_dir} already exists; adapters are never overwritten")
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    return partial


def save_record(partial: Path, spec: TrainingSpec, result: TrainOutput, data: Prepared) -> None:
    """Write training.json next to the saved adapter, then rename it into place."""
    record = {
        "metrics": result.metrics,
        "evaluation": result.evaluation.to_dict() if result.evaluation is not None else {},
        "hyperparams": {
            "method": spec.method,
            "lora": spec.lora.model_dump(),
            "training": spec.training.model_dump(),
            "base_model": str(spec.model_dir),
        },
        "exchange_ids": [ex.exchange_id for ex in data.train],
        "heldout_exchange_ids": [ex.exchange_id for ex in data.heldout],
        "dropped": result.data["dropped"],
        "anchor_free": result.data["anchor_free"],
    }
    (partial / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    # peft writes an empty model-card template here; say what this adapter is instead.
    (partial / "README.md").write_text(adapter_readme(spec, result, data), encoding="utf-8")
    os.rename(partial, spec.output_dir)


def adapter_readme(spec: TrainingSpec, result: TrainOutput, data: Prepared) -> str:
    """The adapter folder's README: what it is, what it was trained on, how it scored."""
    liked, disliked, held_liked, held_disliked = (
        data.counts()[key] for key in ("liked", "disliked", "heldout_liked", "heldout_disliked")
    )
    lora = spec.lora
    lines = [
        f"# selftune LoRA adapter {spec.output_dir.name}",
        "",
        "A LoRA adapter that selftune trained on its users' 👍/👎 ratings. It is one version of",
        "the bot's model; `selftune adapters` lists them all and `/activate` serves one.",
        "",
        f"- Base model: `{spec.model_dir}`",
        f"- Method: {spec.method.upper()}"
        + (" (imitates the 👍 replies)" if spec.method == "sft" else " (learns from 👍 and 👎)"),
        f"- Trained from: {'v' + str(spec.serving_version) if spec.serving_version else 'base'}"
        " (judged against it)",
        f"- Data: {liked} 👍 / {disliked} 👎 trained on, {held_liked} 👍 / {held_disliked} 👎 "
        f"held out, {len(data.dropped)} dropped (`training.json` lists the exchange ids)",
        f"- LoRA: r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, "
        f"on {', '.join(lora.target_modules)}",
        "",
        "## Metrics",
        "",
    ]
    lines += [f"- {name}: {value:.4g}" for name, value in sorted(result.metrics.items())]
    if result.evaluation is not None:
        lines += ["", "Held-out (candidate / serving when trained / base):", ""]
        ev = result.evaluation
        for name in sorted(ev.candidate):
            values = [m.get(name) for m in (ev.candidate, ev.serving, ev.base)]
            shown = " / ".join("–" if v is None else f"{v:.4g}" for v in values)
            lines.append(f"- {name}: {shown}")
    lines += ["", "Load it with peft: `PeftModel.from_pretrained(base_model, this_folder)`.", ""]
    return "\n".join(lines)  # atomic: the adapter appears complete or not at all


def _load(loader: Any, model_dir: Path, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the base model from {model_dir}: {exc}") from None


def main(argv: Sequence[str] | None = None, events: TextIO | None = None) -> int:
    """Entry point of ``python -m bot.trainer SPEC.json``; returns the exit status.

    Events go to ``events`` when given (tests), else to the process's real stdout.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if events is None:
        events = _event_stream()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )

    emit = _emitter(events)
    try:
        if len(args) != 1:
            raise TrainingError("usage: python -m bot.trainer SPEC.json")
        result = train(TrainingSpec.load(Path(args[0])), emit)
    except TrainingError as exc:
        log.error("%s", exc)
        emit_error(events, str(exc))
        return 1
    except Exception as exc:  # anything else is a bug or a resource problem: say what it was
        log.exception("training failed")
        emit_error(events, f"training failed: {type(exc).__name__}: {exc}")
        return 1
    emit(result.done())
    return 0


def _emitter(events: TextIO) -> Emit:
    """Writes one event per line; stops the trainer once its orchestrator is gone."""
    parent = os.getppid()

    def emit(event: Event) -> None:
        if os.getppid() != parent:  # the orchestrator is gone: nobody would register the result
            raise TrainingError("the process that started the trainer has exited")
        events.write(event.to_json() + "\n")
        events.flush()

    return emit


def emit_error(events: TextIO, message: str) -> None:
    """The error event, written even when the parent is gone (then it goes nowhere)."""
    try:
        events.write(Error(message).to_json() + "\n")
        events.flush()
    except OSError:
        pass


def _event_stream() -> TextIO:
    """Keep stdout for progress events only: whatever else writes to it (library prints,
    native code) is sent to stderr instead, so the orchestrator can parse every line."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events
