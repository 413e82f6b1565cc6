"""``pip install .`` (not editable) gives a working ``selftune`` outside the checkout.

A wheel is built from a copy of the sources, installed with ``--no-deps`` into a fresh venv
whose only view of the dependencies is a ``.pth`` line naming this environment's
site-packages (where the checkout itself is not importable: the editable install's own ``.pth``
files are not processed from there). Then, from a folder outside the checkout: ``--version``,
``config example``, ``db upgrade`` and a piped ``chat`` with the tiny test model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "bot", "adapters", "storage", "migrations")


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=300)


def _wheel(tmp: Path) -> Path:
    """Build the wheel from a copy, so the checkout gets no build/ or egg-info."""
    source = tmp / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source))
    return next((tmp / "dist").glob("selftune-*.whl"))


def _venv(tmp: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed and this environment's packages behind it."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "selftune-test-deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    return venv


def _environ(data: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SELFTUNE_", "TELEGRAM_", "DISCORD_", "PYTHON"))
    }
    env.update(SELFTUNE_DATA_DIR=str(data), HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv with the built wheel installed (built once for the module)."""
    tmp = tmp_path_factory.mktemp("install")
    return _venv(tmp, _wheel(tmp))


def _run(
    venv: Path, cwd: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else _environ(cwd / "data"),
        timeout=180,
        check=False,
    )


def test_the_installed_code_and_migrations_come_from_the_venv(
    installed: Path, tmp_path: Path
) -> None:
    probe = "import bot, migrations; print(bot.__file__); print(migrations.head_revision())"
    done = _run(installed, tmp_path, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    module, head = done.stdout.split()
    assert Path(module).is_relative_to(installed) and not Path(module).is_relative_to(ROOT)
    assert head.startswith("0")
    mako = next(installed.glob("lib/python*/site-packages/migrations/script.py.mako"))
    assert mako.is_file()


def test_version_and_config_example(installed: Path, tmp_path: Path) -> None:
    version = _run(installed, tmp_path, "selftune", "--version")
    assert version.returncode == 0 and version.stdout.startswith("selftune 0."), version.stderr
    example = _run(installed, tmp_path, "selftune", "config", "example")
    assert example.stdout == (ROOT / "selftune.example.toml").read_text(encoding="utf-8")


def test_db_upgrade_then_a_piped_chat_outside_the_checkout(
    installed: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    upgrade = _run(installed, tmp_path, "selftune", "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr[-2000:]
    assert "database at revision" in upgrade.stdout
    (tmp_path / "selftune.toml").write_text(
        f'[model]\nname = "{tiny_model_dir}"\ndtype = "float32"\nmax_context_tokens = 256\n'
        f'cache_dir = "{tmp_path / "converted"}"\n'  # not the user's ~/.cache/selftune
        "[generation]\nmax_new_tokens = 8\n",
        encoding="utf-8",
    )
    chat = _run(installed, tmp_path, "selftune", "chat", stdin="Hello!\n/good\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "bot> " in chat.stdout and "Rated 👍" in chat.stdout
    assert (tmp_path / "data" / "selftune.db").is_file()
