"""The one-at-a-time baselines of ``bench/serving.py``, replaying the bench's own requests.

(a) transformers ``generate``, one request after another, same weights and precision as ours;
(b) llama-cpp-python on the same GGUF the default model comes from, one request after another
    (2 threads), in its own cached venv (see ``serving_llamacpp.py``).

Each returns, per request, seconds to the first token and in all, and reply tokens.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot.*, when run as a script

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from bench.serving_chats import PeakMemory, Request
from bench.serving_llamacpp import ensure_installed
from bot.types import GenerationParams, Turn


@dataclass
class Served:
    """One request served alone: seconds to its first token and in all, tokens made."""

    ttft: float
    seconds: float
    tokens: int


@dataclass
class BaselineResult:
    name: str
    served: list[Served]
    peak_mb: float


class _FirstToken(BaseStreamer):
    """Notes when generate() hands out its first new token (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        return None


def _messages(request: Request) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in request.turns]


def transformers_generate(
    model_dir: Path, dtype: torch.dtype, requests: Sequence[Request], threads: int
) -> BaselineResult:
    """Plain ``model.generate`` per request, in order, with the request's own parameters, in a
    subprocess of its own (so its memory is its own)."""
    rows = [{"messages": _messages(r), "params": dataclasses.asdict(r.params)} for r in requests]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(rows, handle)
    command = [sys.executable, __file__, str(model_dir), str(dtype).removeprefix("torch.")]
    process = subprocess.Popen(
        [*command, handle.name, str(threads)], stdout=subprocess.PIPE, text=True
    )
    with PeakMemory(process.pid) as memory:
        out, _ = process.communicate()
    Path(handle.name).unlink()
    served = [Served(**row) for row in json.loads(out.strip().splitlines()[-1])]
    name = f"transformers generate ({threads} threads), one at a time"
    return BaselineResult(name, served, memory.peak_mb)


def _generate_all(model_dir: str, dtype: str, requests_file: str, threads: int) -> None:
    """The subprocess: load the model, serve each request, print the results as JSON."""
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    rows = json.loads(Path(requests_file).read_text())
    requests = [
        Request(tuple(Turn(**m) for m in r["messages"]), GenerationParams(**r["params"]), 0.0)
        for r in rows
    ]
    _generate_one(model, tokenizer, requests[0])  # warm-up, as ours had
    served = [dataclasses.asdict(_generate_one(model, tokenizer, r)) for r in requests]
    print(json.dumps(served))


def _generate_one(model: Any, tokenizer: Any, request: Request) -> Served:
    params = request.params
    ids = tokenizer.apply_chat_template(
        _messages(request), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    streamer = _FirstToken()
    sampling: dict[str, Any] = {"do_sample": False}
    if not params.greedy:
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        sampling["top_k"] = params.top_k
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=params.max_new_tokens,
            repetition_penalty=params.repetition_penalty,
            streamer=streamer,
            **sampling,
        )
    done = time.perf_counter()
    first = streamer.first or done
    return Served(first - started, done - started, int(out.shape[1] - ids.shape[1]))


def llama_cpp(gguf: Path, requests: Sequence[Request], threads: int = 2) -> BaselineResult:
    """llama-cpp-python serving the requests one after another in a subprocess."""
    python = ensure_installed()
    script = Path(__file__).with_name("serving_llamacpp.py")
    context = 2048  # SmolLM2's window, as ours
    process = subprocess.Popen(
        [str(python), str(script), str(gguf), str(threads), str(context)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    served: list[Served] = []
    with PeakMemory(process.pid) as memory:
        json.loads(process.stdout.readline())  # {"ready": true} once the model is loaded
        for request in requests:
            params = request.params
            line = {
                "messages": _messages(request),
                "max_tokens": params.max_new_tokens,
                "temperature": 0.0 if params.greedy else params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
                "repetition_penalty": params.repetition_penalty,
            }
            process.stdin.write(json.dumps(line) + "\n")
            process.stdin.flush()
            answer = json.loads(process.stdout.readline())
            served.append(Served(answer["ttft"], answer["seconds"], answer["tokens"]))
    process.stdin.close()
    process.wait(timeout=30)
    return BaselineResult(
        f"llama.cpp (Q4_1 GGUF, {threads} threads), one at a time", served, memory.peak_mb
    )


if __name__ == "__main__":
    _generate_all(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
