"""``python -m tests.support.trainer_worker [ARGS]``: ``selftune trainer ARGS`` whose trainer
child is tests/support/fake_trainer.py (no model, no torch), for the worker's process tests."""

from __future__ import annotations

import sys

from bot.cli import main
from bot.learning import worker

if __name__ == "__main__":
    worker.TRAINER_MODULE = "tests.support.fake_trainer"
    sys.exit(main(["trainer", *sys.argv[1:]]))
