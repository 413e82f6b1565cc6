"""Settings: TOML file, environment overrides for every key, clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import DEFAULT_MODEL, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "selftune.example.toml"


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings, path = load_settings(None, {"SELFTUNE_DATA_DIR": str(tmp_path)})
    assert path is None
    assert settings.model.name == DEFAULT_MODEL
    assert settings.admins == ["console:local"]
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'selftune.db'}"
    assert settings.telegram.token is None


def test_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(
        'admins = ["telegram:1"]\n[generation]\ntemperature = 0.2\n[database]\nurl = "sqlite+aiosqlite:///x.db"\n',
        encoding="utf-8",
    )
    env = {
        "SELFTUNE_GENERATION__TEMPERATURE": "0.5",
        "SELFTUNE_ADMINS": '["telegram:42", "console:local"]',
        "SELFTUNE_DATABASE__URL": "postgresql+asyncpg://u@h/db",
        "SELFTUNE_LORA__TARGET_MODULES": '["q_proj"]',
        "TELEGRAM_BOT_TOKEN": "123456:" + "A" * 30,
        "UNRELATED": "ignored",
    }
    settings, path = load_settings(config, env)
    assert path == config
    assert settings.generation.temperature == 0.5
    assert settings.admins == ["telegram:42", "console:local"]
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert settings.lora.target_modules == ["q_proj"]
    assert settings.telegram.token is not None
    assert settings.telegram.token.get_secret_value().startswith("123456:")
    assert "AAAA" not in repr(settings)  # secrets never show in reprs (or logs)


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('log_level = "DEBUG"\n', encoding="utf-8")
    settings, path = load_settings(None, {"SELFTUNE_CONFIG": str(config)})
    assert (path, settings.log_level) == (config, "DEBUG")


@pytest.mark.parametrize(
    ("content", "env", "expected"),
    [
        ("[model\nname=1", {}, "is not valid TOML"),
        ('[model]\ndtype = "int3"\n', {}, "'model.dtype' (from "),
        ("[generation]\ntemperature = -1\n", {}, "'generation.temperature'"),
        ("", {"SELFTUNE_GENERATION__TOP_P": "lots"}, "from SELFTUNE_GENERATION__TOP_P"),
        ("", {"SELFTUNE_NOPE": "1"}, "SELFTUNE_NOPE: there is no setting 'nope'"),
        ("", {"SELFTUNE_ADMINS": "telegram:1"}, "SELFTUNE_ADMINS: expected a JSON value"),
        ("", {"SELFTUNE_ADMINS": '["nocolon"]'}, "not a user key"),
        ("[model]\nunknown_key = 1\n", {}, "'model.unknown_key' (from "),
        ('data_dir = 5\n[model]\nname = "x"\n', {}, "'data_dir'"),
    ],
)
def test_invalid_values_name_the_key(
    tmp_path: Path, content: str, env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=None) as error:
        load_settings(config, env)
    assert expected in str(error.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", {})
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_settings(binary, {})


def test_the_documented_example_is_valid() -> None:
    settings, _ = load_settings(EXAMPLE, {})
    assert settings.model.name == DEFAULT_MODEL


def test_example_and_readme_table_are_current() -> None:
    from bot.settings.docs import EXAMPLE as GENERATED
    from bot.settings.docs import README, example_toml, readme_with_table

    assert GENERATED.read_text(encoding="utf-8") == example_toml(), (
        "run python -m bot.settings.docs"
    )
    readme = README.read_text(encoding="utf-8")
    assert readme_with_table(readme) == readme, "run python -m bot.settings.docs"


def test_paths_expand_the_home_directory() -> None:
    settings, _ = load_settings(
        None, {"SELFTUNE_DATA_DIR": "~/x", "SELFTUNE_MODEL__CACHE_DIR": "~/c"}
    )
    assert "~" not in str(settings.data_dir) and "~" not in str(settings.model.cache_dir)
