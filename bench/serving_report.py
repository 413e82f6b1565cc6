"""The report of ``bench/serving.py``: one row per configuration, the bandwidth limit, ratios.

Columns: requests, reply tokens (re-encoded by the model's tokenizer), tokens/s in total,
tokens/s per chat (a reply's tokens over the time from its message to its last token, queueing
included), time to first token p50 and p95 (queueing included), peak resident memory.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from bench.common import percentile
from bench.serving_baselines import BaselineResult
from bench.serving_chats import Request, RunResult


class Counter:
    """Reply tokens by the model's own tokenizer (the bench never trusts text length)."""

    def __init__(self, model_dir: Path) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def __call__(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


def summarize_ours(result: RunResult, count: Counter, peak_mb: float) -> dict[str, float]:
    requests = result.requests
    tokens = [count(r.text) for r in requests]
    per_chat = [
        n / r.finished for n, r in zip(tokens, requests, strict=True) if r.finished and n > 1
    ]
    ttfts = [r.first_token for r in requests if r.first_token is not None]
    return {
        "requests": len(requests),
        "tokens": sum(tokens),
        "total": sum(tokens) / result.seconds,
        "per_chat": statistics.mean(per_chat) if per_chat else float("nan"),
        "ttft50": percentile(sorted(ttfts), 0.50),
        "ttft95": percentile(sorted(ttfts), 0.95),
        "peak_mb": peak_mb,
    }


def summarize_baseline(result: BaselineResult, requests: Sequence[Request]) -> dict[str, float]:
    """Throughput of serving one at a time; time to first token and tokens/s per chat as the
    same arrivals would see them behind a one-at-a-time server (queueing included)."""
    busy_until, ttfts, rates = 0.0, [], []
    for request, served in zip(requests, result.served, strict=True):
        start = max(request.arrived, busy_until)
        ttfts.append(start - request.arrived + served.ttft)
        busy_until = start + served.seconds
        if served.tokens > 1:
            rates.append(served.tokens / (busy_until - request.arrived))
    tokens = sum(s.tokens for s in result.served)
    seconds = sum(s.seconds for s in result.served)
    return {
        "requests": len(requests),
        "tokens": tokens,
        "total": tokens / seconds,
        "per_chat": statistics.mean(rates) if rates else float("nan"),
        "ttft50": percentile(sorted(ttfts), 0.50),
        "ttft95": percentile(sorted(ttfts), 0.95),
        "peak_mb": result.peak_mb,
    }


def batch1_decode(result: RunResult, count: Counter) -> float:
    """Decode speed of replies running alone: tokens after the first per second after it."""
    rates = [
        (count(r.text) - 1) / (r.finished - r.first_token)
        for r in result.requests
        if r.finished and r.first_token is not None and count(r.text) > 8
    ]
    return max(rates) if rates else float("nan")


def print_row(label: str, row: dict[str, float]) -> None:
    print(
        f"  {label:<52} {row['requests']:>4.0f} {row['tokens']:>6.0f} {row['total']:>8.1f} "
        f"{row['per_chat']:>8.1f} {row['ttft50']:>7.2f} {row['ttft95']:>7.2f} "
        f"{row['peak_mb']:>7.0f}"
    )


def print_report(
    args: argparse.Namespace,
    ours: dict[int, RunResult],
    info: dict[str, Any],
    baselines: list[tuple[BaselineResult, Sequence[Request]]],
    bandwidth: tuple[float, float],
    bandwidth_decoding: float,
) -> None:
    count = Counter(info["model_dir"])
    dtype = str(info["dtype"]).removeprefix("torch.")
    mode = "fast" if args.fast_batching else "exact"
    print(
        f"\nselftune serving: SmolLM2-135M-Instruct, {dtype} on {info['device']}, "
        f"{info['threads']} torch threads, {mode} batching, weights "
        f"{'packed' if not args.no_pack else 'plain'}; {args.tokens} new tokens a reply, "
        f"{args.turns} turns a chat, greedy"
    )
    header = f"  {'':<52} {'reqs':>4} {'tokens':>6} {'tok/s':>8} {'tok/s/ch':>8} "
    print(header + f"{'ttft50':>7} {'ttft95':>7} {'peakMB':>7}")
    rows: dict[str, dict[str, float]] = {}
    for chats, result in ours.items():
        row = summarize_ours(result, count, result.peak_mb)
        rows[f"ours {chats}"] = row
        print_row(f"selftune, {chats} concurrent chats", row)
    for baseline, requests in baselines:
        row = summarize_baseline(baseline, requests)
        rows[baseline.name] = row
        print_row(baseline.name, row)
    copy, read = bandwidth
    limit = copy * 1e9 / info["weight_bytes"]
    alone = batch1_decode(ours[min(ours)], count) if ours else float("nan")
    print(f"\n  memory bandwidth, copy (read + write)      {copy:8.1f} GB/s")
    print(f"  memory bandwidth, read only (sum)         {read:8.1f} GB/s")
    print(f"  weights read per token ({dtype})          {info['weight_bytes'] / 1e6:8.1f} MB")
    print(f"  batch-1 decode limit (copy bw / weights)  {limit:8.1f} tok/s")
    print(
        f"  batch-1 decode measured (best reply)      {alone:8.1f} tok/s"
        f" = {alone / limit:.0%} of the limit (target >= 50%)"
    )
    threads = info["threads"]
    limit_decoding = bandwidth_decoding * 1e9 / info["weight_bytes"]
    print(
        f"  copy bandwidth with the {threads} decoding thread(s) {bandwidth_decoding:6.1f} GB/s: "
        f"limit {limit_decoding:.1f} tok/s, measured = {alone / limit_decoding:.0%} of it"
    )
    print_ratios(rows)


def print_ratios(rows: dict[str, dict[str, float]]) -> None:
    at16 = rows.get("ours 16")
    if at16 is None:
        return
    print()
    for name, row in rows.items():
        if name.startswith("ours"):
            continue
        target = 1.5 if name.startswith("llama") else 4.0
        ratio = at16["total"] / row["total"]
        verdict = "met" if ratio >= target else "short"
        print(f"  16 chats vs {name:<52} {ratio:5.2f}x (target {target}x: {verdict})")
    verdict = "met" if at16["ttft95"] < 3.0 else "short"
    print(f"  time to first token p95 at 16 chats {at16['ttft95']:.2f} s (target < 3 s: {verdict})")
