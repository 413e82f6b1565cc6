"""The platform table and the settings agree: every platform section is in PLATFORMS and on
Settings, declares its token variable, and its secrets are masked in logs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from bot.logs import RedactSecrets, settings_secrets
from bot.settings import PLATFORMS, Platform, PlatformSection, Section, Settings, load_settings
from bot.settings.docs import env_name


def _sections() -> dict[str, type[Section]]:
    sections = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            sections[name] = annotation
    return sections


def _secret_fields(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items() if "SecretStr" in str(f.annotation)}


def test_every_platform_section_has_one_entry_and_one_settings_field() -> None:
    on_settings = {n: s for n, s in _sections().items() if issubclass(s, PlatformSection)}
    assert on_settings == {p.name: p.section for p in PLATFORMS}
    assert len({p.section for p in PLATFORMS}) == len(PLATFORMS)
    settings = Settings()
    for platform in PLATFORMS:
        assert settings.platform(platform) is getattr(settings, platform.name)
        assert not settings.platform(platform).configured  # no token, not served


def test_a_wrong_entry_is_refused() -> None:
    wrong = Platform("telegram", PLATFORMS[1].section, "x:Y", None)
    assert wrong.section is not PLATFORMS[0].section
    with pytest.raises(TypeError, match=r"Settings\.telegram is not a DiscordSettings"):
        Settings().platform(wrong)


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.name)
def test_each_platform_token_comes_from_its_variable(platform: Platform) -> None:
    var = platform.section.token_env
    assert var.isupper() and var.endswith("_TOKEN")
    settings, _ = load_settings(None, {var: "a-token-from-the-environment"})
    section = settings.platform(platform)
    assert section.configured and section.token is not None
    assert section.token.get_secret_value() == "a-token-from-the-environment"
    assert var in (platform.section.model_fields["token"].description or "")  # said in the docs
    assert env_name(f"{platform.name}.token").endswith(f" or {var}")


def test_token_variables_are_distinct() -> None:
    variables = [p.section.token_env for p in PLATFORMS]
    assert len(set(variables)) == len(variables)


@pytest.mark.parametrize("name", sorted(_sections()))
def test_every_secret_field_is_declared(name: str) -> None:
    section = _sections()[name]
    assert set(section.secret_fields) == _secret_fields(section), (
        f"{section.__name__}.secret_fields must name its SecretStr fields (logs mask them)"
    )


def _with_every_secret() -> tuple[Settings, list[str]]:
    updates: dict[str, Any] = {}
    values = []
    for name, section in _sections().items():
        fields = {}
        for field in section.secret_fields:
            fields[field] = SecretStr(f"{name}-{field}-s3cr3t")
            values.append(f"{name}-{field}-s3cr3t")
        if fields:
            updates[name] = section(**fields)
    return Settings(**updates), values


def test_every_declared_secret_is_masked_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    settings, values = _with_every_secret()
    assert {p.name for p in PLATFORMS} <= {v.split("-")[0] for v in values}
    assert sorted(settings_secrets(settings)) == sorted(values)
    logger = logging.getLogger("test.platform-secrets")
    logger.addFilter(RedactSecrets(settings_secrets(settings)))
    caplog.set_level(logging.INFO)
    try:
        logger.info("talking with %s", " and ".join(values))
    finally:
        logger.filters.clear()
    assert "s3cr3t" not in caplog.text and caplog.text.count("***") == len(values)
