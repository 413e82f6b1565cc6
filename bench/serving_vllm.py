"""vLLM's CPU server for ``bench/serving.py``: the venv from ``scripts/vllm-venv``, the server
from ``tests/support/vllm.py`` (run-time LoRA loading on, as selftune's OpenAI backend uses it),
the weights in bfloat16 like the local engine's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.vllm import VllmServer

ROOT = Path(__file__).resolve().parents[1]


def vllm_python() -> Path:
    """``PYTEST_VLLM_PYTHON`` if set, else the venv ``scripts/vllm-venv`` makes (or reuses)."""
    given = os.environ.get("PYTEST_VLLM_PYTHON")
    if given:
        return Path(given)
    made = subprocess.run(
        [str(ROOT / "scripts" / "vllm-venv")], check=True, capture_output=True, text=True
    )
    return Path(made.stdout.strip().splitlines()[-1])


class BenchVllmServer(VllmServer):
    """The tests' server with the weights in bfloat16 (the model's config says float32)."""

    def command(self) -> list[str]:
        return [*super().command(), "--dtype", "bfloat16"]
