"""``bench/serving.py``'s profile: where one decoding step of ``rows`` chats spends its time.

The engine runs on its own thread, which torch.profiler does not follow, so this steps a
:class:`bot.engine.batch.Batch` the way the engine does, on this thread, with the engine's
model and router (the engine is idle meanwhile), and returns the step time and the top
operators as text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

from bench.serving_workloads import questions
from bot.engine.batch import Batch, EngineRequest, Prompt, SequenceState
from bot.types import GenerationParams, Turn


def profile_step(gen: Any, rows: int = 16, steps: int = 16, top: int = 15) -> str:
    """The step time of ``rows`` sequences decoding together (best of 3 runs of ``steps``)
    and a torch.profiler table of one more run, by self CPU time."""
    prompts = [gen.encode([Turn("user", q)]).ids for q in questions(rows)]
    params = GenerationParams(max_new_tokens=steps + 8, temperature=0.0, repetition_penalty=1.0)
    engine, model = gen._engine, gen._model

    def run(count: int, prof: Any = None) -> float:
        batch = Batch(engine._batch.min_rows, engine._slots.router)
        with torch.inference_mode():
            engine._slots.router.route_all(None)
            for ids in prompts:
                request = EngineRequest(_prompt(ids), params, lambda _: None)
                seq = SequenceState(request, ids, len(ids) + count + 8, gen._decode)
                out = model(input_ids=torch.tensor([ids]), cache=DynamicCache(), logits_to_keep=1)
                seq.advance(out.logits[:, -1, :].float(), frozenset())
                batch.join(seq, out.cache, len(ids))
            if prof is not None:
                prof.start()  # the steps only, not the prefills
            started = time.perf_counter()
            for _ in range(count):
                logits = batch.step(model).float()
                for i, seq in enumerate(batch.rows):
                    seq.advance(logits[i : i + 1], frozenset())
            seconds = time.perf_counter() - started
            if prof is not None:
                prof.stop()
        return seconds / count

    run(2)
    best = min(run(steps) for _ in range(3))
    prof = profile(activities=[ProfilerActivity.CPU])
    run(steps, prof)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    head = (
        f"{rows}-row decoding step: {best * 1000:.1f} ms = {rows / best:.0f} tok/s "
        f"(best of 3 runs of {steps} steps; {torch.get_num_threads()} torch threads on this "
        "thread)"
    )
    return f"{head}\n\n{table}"


def _prompt(ids: list[int]) -> Callable[[], Prompt]:
    return lambda: Prompt(ids)
