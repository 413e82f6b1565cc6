"""Does the bot learn a hidden taste from 👍/👎, strongly, fast and without damage? Today's code
and this branch side by side, on the real default model.

Tastes of different kinds (length, ending, format, voice, tone) are drawn at random from a
larger set (bench/taste_data.py); for each taste and seed, simulated users chat with the bot and
rate ~200 sampled replies by the taste (bench/taste_run.py, one process per run), the real
pipeline fine-tunes once (Finetuner → trainer subprocess → gate), and the run measures, on
prompts about topics nobody asked about, the share of replies with the taste before and after,
the gate's verdict and metric, the NLL of the base's greedy replies to neutral prompts under the
new adapter, the wall time from /finetune to a live adapter and the training step's MFU. Today's
code trains on a copy of the very same ratings (``--today DIR``: a checkout of main at the start).

    flock /tmp/selftune-bench.lock .venv/bin/python bench/taste.py \\
        [--tastes 4] [--seeds 3] [--today /tmp/selftune-today] [--today-seeds 1] [--json out]

Prints a row per run as it ends, then mean ± sd per taste and code; the load average is printed
before and after (the cores are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # runnable as a plain script

from bench.taste_data import pick  # noqa: E402


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tastes", type=int, default=4, help="tastes drawn from the set")
    parser.add_argument("--only", nargs="*", default=None, help="these tastes instead")
    parser.add_argument("--pick-seed", type=int, default=None, help="default: random")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--today", type=Path, default=None, help="a checkout of today's code")
    parser.add_argument("--today-seeds", type=int, default=1, help="its runs are slow")
    parser.add_argument("--today-tastes", type=int, default=4, help="per seed")
    parser.add_argument("--ratings", type=int, default=200)
    parser.add_argument(
        "--corrections", type=float, default=0.0, help="share of 👎 replies users /better"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every run here")
    parser.add_argument(
        "--today-only", action="store_true", help="only today's code, on the --data already there"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="keep the rated data in DIR/<taste>-<seed> and reuse what is there",
    )
    return parser.parse_args()


def one(
    code: Path | None,
    taste: str,
    seed: int,
    ratings: int,
    data: Path,
    reuse: bool,
    corrections: float = 0.0,
) -> Any:
    """One run in a child process: this branch's code, or the checkout ``code``."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    env = dict(os.environ)
    if code is not None:
        env["SELFTUNE_BENCH_CODE"] = str(code)
    command = [sys.executable, str(HERE / "bench" / "taste_run.py"), "--taste", taste]
    command += ["--seed", str(seed), "--ratings", str(ratings), "--json", str(out)]
    command += ["--corrections", str(corrections)]
    if reuse and code is not None:
        data = known_by(data, code)  # today's code cannot open a newer schema
    command += ["--reuse" if reuse else "--save-data", str(data)]
    # The trainer subprocess runs ``python -m bot.trainer`` from the working directory: the
    # code under test's.
    done = subprocess.run(command, env=env, cwd=code or HERE, check=False)
    if done.returncode != 0:
        return {"taste": taste, "seed": seed, "error": f"exit {done.returncode}"}
    return json.loads(out.read_text())


def _data_dir(root: Path | None, taste: str, seed: int) -> tuple[Path, bool]:
    """Where a run's rated data goes, and whether it is there already (then reused)."""
    if root is None:
        return Path(tempfile.mkdtemp(prefix="selftune-ratings-")), False
    data = root / f"{taste}-{seed}"
    return data, (data / "before.json").exists()


def known_by(data: Path, code: Path) -> Path:
    """A copy of the rated data dir whose database is migrated down to the newest revision the
    checkout ``code`` knows (its ``migrations/versions``), so its code opens it."""
    from alembic import command
    from sqlalchemy import create_engine

    from migrations import alembic_config

    copy = Path(tempfile.mkdtemp(prefix="selftune-ratings-for-code-"))
    shutil.copytree(data, copy, dirs_exist_ok=True)
    known = max(p.name.split("_")[0] for p in (code / "migrations" / "versions").glob("0*.py"))
    # Foreign keys stay off (a plain SQLite connection's default): batch downgrades copy tables.
    engine = create_engine(f"sqlite:///{copy / 'selftune.db'}")
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, known)
    finally:
        engine.dispose()
    return copy


def row(code: str, r: dict[str, Any]) -> str:
    """One line of the table."""
    if "error" in r:
        return f"{code:6} {r['taste']:10} {r['seed']:>4}  {r['error']}"
    gate = r.get("gate") or {}
    metric = gate.get("metric") or "-"
    value = gate.get("candidate")
    nll = r.get("nll") or {}
    rise = (nll["neutral_after"] / nll["neutral_base"] - 1) if nll else float("nan")
    mfu = r["metrics"].get("mfu")
    return (
        f"{code:6} {r['taste']:10} {r['seed']:>4}  {100 * r['before']:5.1f}% → "
        f"{100 * r['after']:5.1f}%  👍{r['votes']['up']:>3}/👎{r['votes']['down']:>3}"
        f"{f' ✍{fixes}' if (fixes := r['votes'].get('corrections')) else ''}  "
        f"{gate.get('verdict', '-'):9} {metric} {'-' if value is None else f'{value:.3f}'}  "
        f"{visible(r['metrics'])}  "
        f"NLL {100 * rise:+5.1f}%  {r['seconds'].get('fine-tune to live', 0):6.0f} s  "
        f"MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}"
    )


def visible(metrics: dict[str, float]) -> str:
    """The gate's look at what the candidate writes (bot.trainer.visible): the reward model's
    AUC on the held-out ratings, its predicted 👍 share of the held-out replies → of the
    candidate's sampled replies, and the NLL rise of the base's greedy replies to the gate's
    general prompts (gate.general_prompts, not the bench's neutral ones)."""
    parts = []
    if "reward_auc" in metrics:
        parts.append(f"RM AUC {metrics['reward_auc']:.2f}")
    if "liked_share" in metrics and "serving.liked_share" in metrics:
        parts.append(
            f"pred. 👍 {100 * metrics['serving.liked_share']:.0f}→"
            f"{100 * metrics['liked_share']:.0f}%"
        )
    if "general_nll" in metrics and "base.general_nll" in metrics:
        rise = metrics["general_nll"] / metrics["base.general_nll"] - 1
        parts.append(f"general NLL {100 * rise:+.1f}%")
    return " ".join(parts) or "(no look at the replies)"


def summary(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Mean ± sd of the share after, per taste and code."""
    lines = []
    keys = sorted({(code, r["taste"]) for code, r in runs if "error" not in r})
    for code, taste in keys:
        after = [100 * r["after"] for c, r in runs if (c, r.get("taste")) == (code, taste)]
        spread = statistics.stdev(after) if len(after) > 1 else 0.0
        lines.append(
            f"{code:6} {taste:10} after {statistics.mean(after):5.1f} ± {spread:4.1f} % "
            f"(n={len(after)})"
        )
    for code in sorted({code for code, _ in runs}):
        judged = [r for c, r in runs if c == code and "error" not in r and r.get("gate")]
        agree = sum(truth(r) == r["gate"].get("verdict") for r in judged)
        lines.append(
            f"{code:6} the gate agrees with the measured change in {agree} of {len(judged)} "
            f"runs (pass = share up ≥ {MOVED:.0%} points, neutral NLL up < {DAMAGE:.0%})"
        )
    return lines


MOVED = 0.05  # a taste share that rose less did not visibly move
DAMAGE = 0.10  # the issue's bound on the neutral prompts' NLL rise


def truth(r: dict[str, Any]) -> str:
    """The verdict the measured numbers call for: pass when the taste moved and nothing broke."""
    nll = r.get("nll") or {}
    rise = nll["neutral_after"] / nll["neutral_base"] - 1 if nll else 0.0
    return "pass" if r["after"] - r["before"] >= MOVED and rise < DAMAGE else "fail"


def main() -> None:
    args = _args()
    tastes = args.only or pick(args.tastes, args.pick_seed or int.from_bytes(os.urandom(4)))
    print(f"load average before: {os.getloadavg()}; tastes {tastes}", flush=True)
    runs: list[tuple[str, dict[str, Any]]] = []

    def record(code: str, result: dict[str, Any]) -> None:
        runs.append((code, result))
        print(row(code, result), flush=True)
        if args.json:
            args.json.write_text(json.dumps([{"code": c, **r} for c, r in runs], indent=2))

    for seed in range(args.seeds):
        saved = []
        for taste in tastes:
            data, reuse = _data_dir(args.data, taste, seed)
            if args.today_only and reuse:
                saved.append((taste, data))
                continue
            ran = one(None, taste, seed, args.ratings, data, reuse, args.corrections)
            record("ours", ran)
            if "error" not in runs[-1][1]:
                saved.append((taste, data))
        # Today's code after this seed's runs of ours (it is slow), on the same ratings.
        for taste, data in (
            saved[: args.today_tastes] if args.today and seed < args.today_seeds else []
        ):
            record("today", one(args.today, taste, seed, args.ratings, data, reuse=True))
    print("\n".join(["", *summary(runs)]))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
