"""README's command table, made from the command table (``table.py``).

``python -m bot.commands.docs`` rewrites it between the ``command-table`` markers; a test checks
it is current, so the documentation cannot drift from the commands (as ``bot.settings.docs`` does
for the configuration table).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bot.commands.table import COMMANDS, SHORTCUTS, CommandSpec
from bot.settings.docs import replace_between

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- command-table:begin -->", "<!-- command-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _usage(spec: CommandSpec) -> str:
    usage = f"`/{spec.name}" + (f" {spec.args}" if spec.args else "") + "`"
    shortcuts = [key for key, command in SHORTCUTS.items() if command == f"/{spec.name}"]
    if shortcuts:
        usage += " (console: " + ", ".join(f"`{key}`" for key in shortcuts) + ")"
    return usage + (" (admin)" if spec.admin else "")


def _what(spec: CommandSpec) -> str:
    return spec.help + (f" — {spec.arg_help}" if spec.arg_help else "")


def markdown_table() -> str:
    """One row per command: usage (with console shortcuts), what it does, who sees the answer."""
    rows = ["| command | what it does | answer |", "| --- | --- | --- |"]
    for spec in COMMANDS:
        seen = "only to you" if spec.private else "in the chat"
        rows.append(f"| {_cell(_usage(spec))} | {_cell(_what(spec))} | {seen} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the current table."""
    return replace_between(readme, BEGIN, END, markdown_table())


def main() -> int:
    """Rewrite README's command table."""
    README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the command table in {README.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
