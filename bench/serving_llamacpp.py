"""The llama.cpp baseline of ``bench/serving.py``: llama-cpp-python in its own cached venv.

llama-cpp-python is not a selftune dependency: it compiles llama.cpp from source (~6 minutes
on 2 cores), so the bench installs it once into a virtual environment outside the repository
(``~/.cache/selftune/bench/llama-cpp-venv``, reused afterwards) and runs it there as a
subprocess. The subprocess (this file, run with that venv's Python) answers one request at a
time, like a single llama.cpp server slot, and prints one JSON line per request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

VERSION = "0.3.36"
VENV = Path.home() / ".cache" / "selftune" / "bench" / "llama-cpp-venv"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_installed(log: bool = True) -> Path:
    """Build llama-cpp-python (native CPU flags) into the cached venv unless already there."""
    python = venv_python()
    probe = [str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if log:
        print(f"installing llama-cpp-python {VERSION} into {VENV} (compiles ~6 min, once)")
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON", FORCE_CMAKE="1")
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 2)
    started = time.perf_counter()
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-cache-dir",
            f"llama-cpp-python=={VERSION}",
        ],
        check=True,
        env=env,
    )
    if log:
        print(f"llama-cpp-python built in {time.perf_counter() - started:.0f} s")
    return python


def _serve(model_path: str, threads: int, n_ctx: int) -> None:
    """Run in the llama venv: read requests (JSON lines) on stdin, answer one at a time."""
    from llama_cpp import Llama  # type: ignore[import-not-found]

    llm = Llama(model_path=model_path, n_threads=threads, n_ctx=n_ctx, verbose=False)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.perf_counter()
        first = None
        text = ""
        for chunk in llm.create_chat_completion(
            messages=request["messages"],
            max_tokens=request["max_tokens"],
            temperature=request["temperature"],
            top_p=request.get("top_p", 1.0),
            top_k=request.get("top_k", 0),
            repeat_penalty=request.get("repetition_penalty", 1.0),
            seed=request.get("seed", 0),
            stream=True,
        ):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                first = first or time.perf_counter()
                text += delta
        done = time.perf_counter()
        # Counted as the bench counts ours: the reply text re-encoded (the same vocabulary).
        tokens = len(llm.tokenize(text.encode(), add_bos=False, special=False))
        answer = {"ttft": (first or done) - started, "seconds": done - started, "tokens": tokens}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["install"]:
        ensure_installed()
    else:
        _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
