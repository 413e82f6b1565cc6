"""``python -m tests.support.fake_trainer SPEC.json``: the trainer child process, without a
model. It speaks the real trainer's protocol (one JSON event per line) and writes its adapter
folder to ``<output>.partial``, renamed into place when complete, as bot/trainer/run.py does;
``FAKE_TRAINER_HOLD_S`` makes it wait that long half-way (so a test can kill its worker)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from bot.learning.protocol import Done, Event, Start, Step, TrainingSpec


def _emit(event: Event) -> None:
    sys.stdout.write(event.to_json() + "\n")
    sys.stdout.flush()


def main(spec_path: str) -> int:
    spec = TrainingSpec.load(Path(spec_path))
    rows = spec.dataset.read_text(encoding="utf-8").splitlines()
    _emit(Start(spec.method, examples=len(rows), total_steps=2))
    partial = spec.output_dir.with_name(spec.output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text("{}", encoding="utf-8")
    _emit(Step(1, 2, loss=2.5))
    time.sleep(float(os.environ.get("FAKE_TRAINER_HOLD_S", "0")))
    partial.rename(spec.output_dir)
    _emit(Step(2, 2, loss=1.5))
    _emit(Done({"train_loss": 1.5, "steps": 2.0}, None, {"method": spec.method}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
