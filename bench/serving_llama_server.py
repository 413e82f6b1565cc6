"""llama.cpp's own server for ``bench/serving.py``, built from source with native CPU flags.

llama.cpp's source comes from the ``llama-cpp-python`` sdist on PyPI (it vendors llama.cpp at a
pinned commit), fetched with pip; ``cmake -DGGML_NATIVE=ON -DLLAMA_CURL=OFF`` builds the
``llama-server`` target into ``${XDG_CACHE_HOME:-~/.cache}/selftune/llama.cpp/`` once (several
minutes on 2 cores), reused afterwards. A file lock keeps two benches from building at once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.net import free_port

VERSION = "0.3.36"  # llama-cpp-python, vendoring llama.cpp
READY_TIMEOUT_S = 120.0


def cache_dir() -> Path:
    """Where the source, the build and the converted weights live."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "selftune" / "llama.cpp"


def binary(cache: Path | None = None) -> Path:
    """The built ``llama-server``, building it first unless it is there."""
    cache = cache or cache_dir()
    built = cache / "build" / "bin" / "llama-server"
    if built.is_file():
        return built
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".build.lock"):
        if not built.is_file():  # another bench may have built it while this one waited
            _build(_source(cache), cache / "build")
    return built


def _source(cache: Path) -> Path:
    """llama.cpp's source tree inside the unpacked sdist (downloaded once)."""
    tree = cache / "src" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    folder = cache / "src"
    archive = folder / f"llama_cpp_python-{VERSION}.tar.gz"
    if not archive.is_file():
        print(f"  ... downloading llama-cpp-python {VERSION}'s source (llama.cpp)", flush=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        subprocess.run([*pip, "-d", str(folder), f"llama-cpp-python=={VERSION}"], check=True)
    with tarfile.open(archive) as sdist:
        sdist.extractall(folder, filter="data")
    return tree


def _build(source: Path, build: Path) -> None:
    print(f"  ... building llama-server from {source} (several minutes, once)", flush=True)
    started = time.perf_counter()
    configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    flags = ["-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
    subprocess.run([*configure, *flags, "-DLLAMA_BUILD_EXAMPLES=OFF"], check=True)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True
    )
    print(f"  ... llama-server built in {time.perf_counter() - started:.0f} s", flush=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class LlamaServer:
    """One ``llama-server`` process: ``weights`` with ``threads`` threads and ``slots``
    parallel slots (continuous batching), on 127.0.0.1, the GGUF's own chat template."""

    program: Path
    weights: Path
    threads: int
    slots: int
    log_path: Path
    slot_context: int = 512  # tokens a slot holds: the bench's prompts and replies fit
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            str(self.program), "-m", str(self.weights), "--host", "127.0.0.1",
            "--port", str(self.port), "-t", str(self.threads), "-tb", str(self.threads),
            "-np", str(self.slots), "-c", str(self.slot_context * self.slots), "--jinja",
            "--alias", "smollm2",
        ]  # fmt: skip

    def start(self) -> None:
        """Start it and wait for ``/health``; raises RuntimeError with the log's tail."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited early:\n{self._tail()}")
            if _healthy(self.base_url.removesuffix("/v1") + "/health"):
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"llama-server not ready in {READY_TIMEOUT_S:g} s:\n{self._tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

    def _tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
