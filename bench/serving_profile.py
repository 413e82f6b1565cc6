"""``bench/serving.py --profile``: where a batch-1 decoding step spends its time.

The engine runs on its own thread, which torch.profiler does not follow, so this steps a
:class:`bot.engine.batch.Batch` the way the engine does, on this thread, with the engine's
model and router (the engine is idle meanwhile).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

from bot.engine.batch import Batch, EngineRequest, Prompt, SequenceState
from bot.types import GenerationParams, Turn


def profile_batch1(gen: Any, steps: int = 32) -> None:
    """Print the step time and the top operators of ``steps`` batch-1 decoding steps."""
    ids = gen.encode([Turn("user", "Tell me about the sea.")]).ids
    params = GenerationParams(max_new_tokens=steps + 8, temperature=0.0)
    request = EngineRequest(lambda: Prompt(ids), params, lambda _: None)
    engine = gen._engine
    model = gen._model

    def run(count: int) -> float:
        seq = SequenceState(request, ids, len(ids) + count + 8, gen._decode)
        batch = Batch(engine._batch.min_rows, engine._slots.router)
        with torch.inference_mode():
            engine._slots.router.route_all(None)
            out = model(input_ids=torch.tensor([ids]), cache=DynamicCache(), logits_to_keep=1)
            seq.advance(out.logits[:, -1, :].float(), frozenset())
            batch.join(seq, out.cache, len(ids))
            started = time.perf_counter()
            for _ in range(count):
                seq.advance(batch.step(model).float(), frozenset())
        return (time.perf_counter() - started) / count

    run(4)
    alone = min(run(steps) for _ in range(3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    print(f"\n  batch-1 step: {alone * 1000:.1f} ms (best of 3 runs of {steps} steps)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
