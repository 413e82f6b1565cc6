"""The report of ``bench/serving.py``: one markdown table per workload, every system a row.

Columns: total tokens/s (the workload's token accounting over its wall time), the ratio to the
best anchor on the same requests, time to first token p50/p95 (from the time the request was
sent), the system's peak resident memory (a server's whole process tree), and the tokens
counted. Then the bandwidth limits of a lone reply and the issue's targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

# The tokenizer class alone: AutoTokenizer would import torch, and the llama.cpp engine's bench
# process must not (bench/serving_llama_engine.py).
from transformers import PreTrainedTokenizerFast

from bench.serving_workloads import Summary


class Counter:
    """Reply tokens by the model's own tokenizer (the bench never trusts text length)."""

    def __init__(self, model_dir: Path) -> None:
        self._tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)

    def __call__(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


@dataclass
class SystemResult:
    """One system's medians per workload key, its peak memory, and how it was set up."""

    name: str
    anchor: bool
    summaries: dict[str, Summary] = field(default_factory=dict)
    peak_mb: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class Bandwidth:
    """Copy bandwidth (bytes read + written per second) with one thread and with the threads
    the engine decodes with, and the bytes of bf16 weights one decoding step reads."""

    one_thread_gbs: float
    decoding_gbs: float
    decoding_threads: int
    weight_bytes: int

    def limit(self, gbs: float) -> float:
        """Tokens/s of a lone reply if every step read the weights once at ``gbs``."""
        return gbs * 1e9 / self.weight_bytes


def best_anchor(systems: list[SystemResult], key: str) -> SystemResult | None:
    """The anchor with the most tokens/s on workload ``key``."""
    anchors = [s for s in systems if s.anchor and key in s.summaries]
    return max(anchors, key=lambda s: s.summaries[key].total, default=None)


def workload_table(systems: list[SystemResult], key: str, label: str) -> list[str]:
    """The markdown table of workload ``key``: every system that ran it."""
    best = best_anchor(systems, key)
    anchor_total = best.summaries[key].total if best else math.nan
    lines = [
        f"### {label}" + (f" (best anchor: {best.name})" if best else ""),
        "",
        "| system | tok/s | × best anchor | TTFT p50 s | TTFT p95 s | peak RSS MB | tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in systems:
        row = system.summaries.get(key)
        if row is None:
            continue
        flag = f" ({row.mismatches} rows with another token count!)" if row.mismatches else ""
        lines.append(
            f"| {system.name}{' (anchor)' if system.anchor else ''}{flag} | {row.total:.1f} | "
            f"{row.total / anchor_total:.2f} | {row.ttft50:.2f} | {row.ttft95:.2f} | "
            f"{system.peak_mb:.0f} | {row.tokens} |"
        )
    return [*lines, ""]


def bandwidth_lines(bandwidth: Bandwidth, alone: dict[str, float]) -> list[str]:
    """Lone-reply decoding speeds as shares of both bandwidth limits (bf16 weights)."""
    one = bandwidth.limit(bandwidth.one_thread_gbs)
    many = bandwidth.limit(bandwidth.decoding_gbs)
    threads = bandwidth.decoding_threads
    lines = [
        "### A lone reply against the memory-bandwidth limit (bf16 weights)",
        "",
        f"bf16 weights read per token: {bandwidth.weight_bytes / 1e6:.1f} MB. Copy bandwidth "
        f"(read + write): {bandwidth.one_thread_gbs:.1f} GB/s with 1 thread → limit "
        f"{one:.0f} tok/s; {bandwidth.decoding_gbs:.1f} GB/s with the {threads} decoding "
        f"thread(s) → limit {many:.0f} tok/s.",
        "",
        "| system | decode tok/s alone | share of 1-thread limit | share of decoding limit |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, rate in alone.items():
        lines.append(f"| {name} | {rate:.1f} | {rate / one:.0%} | {rate / many:.0%} |")
    return [*lines, ""]


def target_lines(systems: list[SystemResult], ours: str) -> list[str]:
    """The issue's targets for system ``ours``, met or short."""
    engine = next((s for s in systems if s.name == ours), None)
    if engine is None:
        return []
    lines = [f"### Targets (issue 14): {ours}", ""]
    for key in ("fixed-16", "chat-16"):
        best, row = best_anchor(systems, key), engine.summaries.get(key)
        if best is None or row is None:
            continue
        ratio = row.total / best.summaries[key].total
        lines.append(
            f"- {key}: {ratio:.2f}× the best anchor (target ≥ 1.5×: {_verdict(ratio >= 1.5)})"
        )
    for key, limit in (("chat-16", 1.0), ("chat-32", 2.0)):
        if (row := engine.summaries.get(key)) is not None:
            verdict = _verdict(row.ttft95 < limit)
            lines.append(f"- {key}: TTFT p95 {row.ttft95:.2f} s (target < {limit:g} s: {verdict})")
    return [*lines, ""]


def _verdict(met: bool) -> str:
    return "met" if met else "short"
