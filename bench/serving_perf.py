"""``bench/serving.py``'s kernel-level profile: ``perf`` samples of a serving process.

torch.profiler sees neither llama.cpp's kernels nor a server in another process, so the
llama.cpp systems (the in-process engine and ``llama-server``) are profiled with Linux's
``perf`` (``apt-get install linux-perf``): CPU-clock samples of every thread of the process
while it serves one workload, grouped by library and function. Without ``perf`` the profile
says so and the bench goes on.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from types import TracebackType

_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$")
_ADDRESS = re.compile(r"^0x[0-9a-f]+$")


class Perf:
    """``perf record`` attached to ``pid`` for the duration of the ``with`` block."""

    def __init__(self, pid: int, out: Path, frequency: int = 999) -> None:
        self.out = out
        self.available = shutil.which("perf") is not None
        self._command = [
            "perf", "record", "-q", "-e", "cpu-clock", "-F", str(frequency),
            "-p", str(pid), "-o", str(out),
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Perf:
        if self.available:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.5)  # attached before the workload starts
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)  # perf writes its file and exits
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def table(self, top: int = 12) -> str:
        """The samples by library, then the ``top`` functions, as text."""
        if not self.available:
            return "(perf not found: `apt-get install linux-perf` for the kernel-level profile)"
        if not self.out.exists():
            return "(perf recorded nothing: perf_event_paranoid may forbid it)"
        report = subprocess.run(
            ["perf", "report", "-i", str(self.out), "--stdio", "--no-children",
             "--sort", "dso,sym", "--percent-limit", "0.05"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        return summarize(report, top)


def summarize(report: str, top: int) -> str:
    """``perf report --sort dso,sym`` text → shares by library and the top functions (code
    without a symbol, e.g. a stripped library's static functions, summed per library)."""
    libraries: dict[str, float] = defaultdict(float)
    functions: dict[tuple[str, str], float] = defaultdict(float)
    for line in report.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        share, library, _, symbol = float(match[1]), match[2], match[3], match[4]
        libraries[library] += share
        name = "(functions without a symbol)" if _ADDRESS.match(symbol) else symbol
        functions[(library, name)] += share
    if not libraries:
        return "(perf found no samples)"
    lines = ["share  library", *_rows(libraries, top), "", "share  function (library)"]
    named = {f"{name} ({library})": share for (library, name), share in functions.items()}
    lines += _rows(named, top)
    return "\n".join(lines)


def _rows(shares: dict[str, float], top: int) -> list[str]:
    ranked = sorted(shares.items(), key=lambda item: -item[1])[:top]
    return [f"{share:5.1f}% {name}" for name, share in ranked]
