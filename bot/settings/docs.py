"""The documented example config and the README's configuration table, made from Settings.

``python -m bot.settings.docs`` rewrites both; a test checks they are current, so the documentation
cannot drift from the code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from bot.settings.load import ENV_PREFIX, Settings
from bot.settings.platforms import PLATFORMS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "selftune.example.toml"
README = ROOT / "README.md"
BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
# The other variable a platform's token may come from (TELEGRAM_BOT_TOKEN), as its section says.
_ENV_ALIASES = {f"{p.name}.token": p.section.token_env for p in PLATFORMS}
_MACHINE_DEFAULTS = {
    "data_dir": "~/.local/share/selftune",
    "model.cache_dir": "~/.cache/selftune/models",
}


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo, bool]]:
    """(dotted key, field, is_section) in declaration order; sections after plain keys."""
    plain, sections = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((name, annotation, field))
        else:
            plain.append((prefix + name, field, False))
    yield from plain
    for name, section, field in sections:
        yield prefix + name, field, True
        yield from _fields(section, prefix + name + ".")


def _default(key: str, field: FieldInfo) -> Any:
    if key in _MACHINE_DEFAULTS:
        return _MACHINE_DEFAULTS[key]
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def example_toml() -> str:
    """The documented example config: every key with its default and description, as TOML."""
    lines = [
        "# selftune configuration: every key with its default. Copy to ./selftune.toml or",
        "# ~/.config/selftune/config.toml (or pass --config / SELFTUNE_CONFIG) and edit.",
        "# Every key can also be set from the environment: SELFTUNE_ + the dotted key in upper",
        "# case with . written __ (database.url -> SELFTUNE_DATABASE__URL); lists as JSON.",
    ]
    for key, field, is_section in _fields(Settings):
        if is_section:
            lines += ["", f"[{key}]"]
            continue
        name = key.rsplit(".", 1)[-1]
        if field.description:
            lines.append(f"# {field.description}")
        value = _default(key, field)
        secret = field.annotation is not None and "SecretStr" in str(field.annotation)
        if value is None or secret or isinstance(value, SecretStr):
            lines.append(f"# {name} = ...")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def env_name(key: str) -> str:
    """The environment variable(s) that set the dotted ``key``."""
    name = ENV_PREFIX + key.upper().replace(".", "__")
    alias = _ENV_ALIASES.get(key)
    return f"{name} or {alias}" if alias else name


def markdown_table() -> str:
    """The README's configuration table: key, environment variable, default, description."""
    rows = ["| key | environment | default | what it does |", "| --- | --- | --- | --- |"]
    for key, field, is_section in _fields(Settings):
        if is_section:
            continue
        value = _default(key, field)
        shown = "—" if value is None else f"`{_toml_value(value)}`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | `{env_name(key)}` | {shown} | {description} |")
    return "\n".join(rows)


def replace_between(text: str, begin: str, end: str, table: str) -> str:
    """``text`` with what stands between the markers ``begin`` and ``end`` replaced by
    ``table`` (the README's generated tables: configuration here, commands in
    :mod:`bot.commands.docs`)."""
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the table markers replaced by the current table."""
    return replace_between(readme, BEGIN, END, markdown_table())


def main() -> int:
    """Rewrite selftune.example.toml and the README's configuration table from Settings."""
    EXAMPLE.write_text(example_toml(), encoding="utf-8")
    README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {EXAMPLE.name} and the table in {README.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
