"""The deployment files: the Makefile's torch index, the systemd unit, the env example, the
Dockerfile and the compose file, checked with what runs on a development machine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from bot.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, object] = tomllib.load(file)["project"]
    return project


def _torch_pin() -> str:
    dependencies = _pyproject()["dependencies"]
    assert isinstance(dependencies, list)
    return next(d for d in dependencies if isinstance(d, str) and d.startswith("torch=="))


def _make_dry_run(*variables: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # -n -B: print every command of a fresh install without running any.
    done = subprocess.run(
        [make, "-n", "-B", "install", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_requires_python_admits_the_tested_python_and_the_newer_ones() -> None:
    supported = SpecifierSet(str(_pyproject()["requires-python"]))
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert running in supported
    assert all(v in supported for v in ("3.11", "3.12", "3.13", "3.14"))
    assert "3.10" not in supported


def test_make_takes_torch_from_the_default_index_unless_told() -> None:
    commands = _make_dry_run()
    assert "--index-url" not in commands
    assert "install -e '.[test]'" in commands


def test_make_installs_the_pinned_torch_from_torch_index_url_first() -> None:
    commands = _make_dry_run(f"TORCH_INDEX_URL={CPU_INDEX}").splitlines()
    torch_line = next(i for i, line in enumerate(commands) if f"--index-url '{CPU_INDEX}'" in line)
    assert f"'{_torch_pin()}'" in commands[torch_line]
    project_line = next(i for i, line in enumerate(commands) if "install -e" in line)
    assert torch_line < project_line


def test_make_builds_the_pinned_llama_cpp_natively_before_the_project() -> None:
    commands = _make_dry_run().splitlines()
    pin = re.search(r"llama-cpp-python==[0-9.]+", (ROOT / "pyproject.toml").read_text())
    assert pin is not None
    llama_line = next(i for i, line in enumerate(commands) if f"'{pin.group(0)}'" in line)
    assert commands[llama_line].startswith('CMAKE_ARGS="-DGGML_NATIVE=ON" ')
    assert llama_line < next(i for i, line in enumerate(commands) if "install -e" in line)


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / "selftune.env.example").read_text(encoding="utf-8").splitlines()
    pairs = (line.partition("=") for line in lines if line.strip() and not line.startswith("#"))
    return {name: value for name, _, value in pairs}


def test_the_env_example_loads_as_settings() -> None:
    environ = _env_example()
    assert {"TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"} <= environ.keys()
    settings, _ = load_settings(None, environ)
    assert settings.admins == ["telegram:123456789"]
    # Empty tokens mean "not this platform", not an empty token.
    assert settings.telegram.token is None and settings.discord.token is None


def test_the_commented_env_lines_name_real_settings() -> None:
    text = (DEPLOY / "selftune.env.example").read_text(encoding="utf-8")
    for name, value in re.findall(r"^#(SELFTUNE_[A-Z_]+)=(\S+)$", text, re.MULTILINE):
        load_settings(None, {name: value.replace("PASSWORD", "secret")})


def _unit_with(exec_start: str) -> str:
    unit = (DEPLOY / "selftune.service").read_text(encoding="utf-8")
    assert "\nExecStart=/opt/selftune/bin/selftune run\n" in unit
    return unit.replace("ExecStart=/opt/selftune/bin/selftune", f"ExecStart={exec_start}")


def test_the_systemd_unit_restarts_on_failure_with_its_env_file_and_user() -> None:
    unit = (DEPLOY / "selftune.service").read_text(encoding="utf-8")
    for line in (
        "Restart=on-failure",
        "EnvironmentFile=/etc/selftune/selftune.env",
        "User=selftune",
        "StateDirectory=selftune",
        "Environment=SELFTUNE_DATA_DIR=/var/lib/selftune",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert f"\n{line}\n" in unit, line


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this environment's selftune.
    selftune = Path(sys.executable).with_name("selftune")
    if not selftune.exists():
        pytest.skip("no selftune script next to this Python")
    unit = tmp_path / "selftune.service"
    unit.write_text(_unit_with(str(selftune)), encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stderr


def test_the_dockerfile_copies_every_installed_package_and_reads_the_torch_pin() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    for package in ("bot", "adapters", "storage", "migrations"):
        assert f"COPY {package} ./{package}\n" in dockerfile
    assert "COPY pyproject.toml README.md ./" in dockerfile
    assert f"ARG TORCH_INDEX_URL={CPU_INDEX}\n" in dockerfile
    pin = re.search(r"grep -o '([^']+)' pyproject.toml", dockerfile)
    assert pin is not None
    assert re.findall(pin.group(1), (ROOT / "pyproject.toml").read_text())[0] == _torch_pin()


def test_compose_runs_the_bot_on_postgresql_with_the_env_file() -> None:
    compose = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    assert "image: postgres:" in compose
    assert "dockerfile: deploy/Dockerfile" in compose and "context: .." in compose
    assert "- selftune.env" in compose
    url = r"SELFTUNE_DATABASE__URL: postgresql\+asyncpg://selftune:\S+@db:5432/"
    assert re.search(url, compose)
    assert "condition: service_healthy" in compose
    assert "restart: on-failure" in compose


def test_the_deployment_pages_configurations_load(tmp_path: Path) -> None:
    """Each TOML block of README's "From one machine to many" is a configuration that loads."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### From one machine to many")
    page = readme[start : readme.index("\n### ", start + 1)]
    blocks = re.findall(r"```toml\n(.*?)```", page, re.S)
    assert len(blocks) == 2
    env = {"SELFTUNE_DATA_DIR": str(tmp_path), "TELEGRAM_BOT_TOKEN": "1:x"}
    env["DISCORD_BOT_TOKEN"] = "y"
    loaded = []
    for block in blocks:
        path = tmp_path / "config.toml"
        path.write_text(block.replace("…", "secret"))
        loaded.append(load_settings(path, env)[0])
    assert loaded[0].backend.kind == "openai"
    assert loaded[1].training.runner == "queue" and loaded[1].discord.shard_ids == [0, 1]
    assert loaded[1].storage.adapters_url == "s3://selftune-adapters/prod"
