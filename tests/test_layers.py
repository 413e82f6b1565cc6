"""The house rules on imports, checked on every module's syntax tree (no import is executed).

- torch, transformers, peft and trl live only under ``bot/engine/`` and ``bot/trainer/``
  (transformers' torch-free tokenizer also in ``bot/ggml/``); llama.cpp's bindings only under
  ``bot/ggml/`` (which never loads torch); each platform SDK only in its adapter package;
  matplotlib only in the chart module. Lazy imports
  (inside a function) count too: they load the library all the same.
- Each layer imports only the first-party layers above it (shared/LAYOUT.md's table). The few
  places that may reach into the torch packages do it lazily, so the core starts without torch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "adapters", "storage", "migrations")

# Third-party libraries and the only places that may import them.
HEAVY: dict[str, tuple[str, ...]] = {
    "torch": ("bot/engine/", "bot/trainer/"),
    # bot/ggml: the tokenizer and chat template only (PreTrainedTokenizerFast, torch-free).
    "transformers": ("bot/engine/", "bot/trainer/", "bot/ggml/"),
    "peft": ("bot/engine/", "bot/trainer/"),
    "trl": ("bot/trainer/",),
    "llama_cpp": ("bot/ggml/",),
    "telegram": ("adapters/telegram/",),
    "discord": ("adapters/discord/",),
    "matplotlib": ("bot/commands/charts.py",),
}

_BASE = ("bot.types", "bot.errors")
_CORE = (*_BASE, "bot.settings", "storage", "bot.outbox", "bot.generation")
# First-party modules each layer may import at module level (prefix match). The most specific
# layer (longest path prefix) applies.
LAYERS: dict[str, tuple[str, ...]] = {
    "bot/__init__.py": (),
    "bot/types.py": (),
    "bot/errors.py": ("bot.types",),
    "bot/settings/": (*_BASE, "bot.settings"),
    "storage/": (*_BASE, "storage"),
    "migrations/": (*_BASE, "bot.settings", "storage", "migrations"),
    "bot/outbox.py": _BASE,
    "bot/logs.py": (*_BASE, "bot.settings"),
    "bot/generation/": (*_BASE, "bot.settings", "bot.generation"),
    "bot/learning/": (*_CORE, "bot.metrics", "bot.learning"),
    # The command table is a leaf (it imports bot.types only): the chat tells commands apart.
    "bot/chat/": (
        *_CORE,
        "bot.metrics",
        "bot.learning.versions",
        "bot.commands.table",
        "bot.chat",
    ),
    "bot/commands/": (*_CORE, "bot.learning", "bot.chat", "bot.commands"),
    "bot/engine/": (*_BASE, "bot.settings", "bot.generation", "bot.engine"),
    # The llama.cpp engine: no torch, so none of bot.engine (its tokenizer loads torch too).
    "bot/ggml/": (*_BASE, "bot.settings", "bot.generation", "bot.ggml"),
    "bot/trainer/": (
        *_BASE,
        "bot.settings",
        "bot.learning.protocol",
        "bot.learning.evaluation",
        "bot.engine.runtime",
        "bot.engine.lora",
        "bot.generation.template",
        "bot.trainer",
    ),
    "adapters/": (*_BASE, "bot.settings", "bot.commands.table", "adapters"),
    "bot/metrics.py": _BASE,
    # The operator's console: storage and the core's values, its services through WebDeps.
    "bot/web/": (*_CORE, "bot.metrics", "bot.learning.protocol", "bot.web"),
    "bot/app.py": ("bot", "adapters", "storage", "migrations"),
    "bot/webwiring.py": ("bot", "adapters", "storage", "migrations"),
    "bot/startup.py": ("bot", "adapters", "storage", "migrations"),
    "bot/cli/": ("bot", "adapters", "storage", "migrations"),
}
# Imports inside functions that a layer may also make (loaded only when that path is taken).
LAZY: dict[str, tuple[str, ...]] = {
    "bot/generation/source.py": ("bot.engine.convert",),
    "bot/generation/openai_api.py": ("bot.engine.tokenizer",),
}
TORCH_ZONE = ("bot.engine", "bot.trainer")
# Outside the torch packages only these may import them, and only inside a function.
TORCH_ZONE_LAZY = ("bot/app.py", "bot/startup.py", "bot/cli/", *LAZY)
FIRST_PARTY = ("bot", "adapters", "storage", "migrations")


@dataclass(frozen=True)
class Import:
    module: str
    line: int
    lazy: bool  # inside a function body


def imports(path: Path) -> list[Import]:
    """Every absolute import in a module, with whether it sits inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append(Import(child.module, child.lineno, lazy))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # annotations only: nothing is loaded at run time
            visit(child, inner)

    visit(tree, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _where(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _layer(where: str) -> tuple[str, ...] | None:
    matches = [key for key in LAYERS if where == key or where.startswith(key)]
    return LAYERS[max(matches, key=len)] if matches else None


def violations(path: Path) -> list[str]:
    """What ``path`` imports against the rules, one line each."""
    where = _where(path)
    found = []
    allowed = _layer(where)
    for imp in imports(path):
        top = imp.module.split(".")[0]
        places = HEAVY.get(top)
        if places is not None and not where.startswith(places):
            found.append(f"{where}:{imp.line} imports {imp.module} (only in {', '.join(places)})")
        if top not in FIRST_PARTY or allowed is None:
            continue
        if _within(imp.module, TORCH_ZONE) and not where.startswith(
            ("bot/engine/", "bot/trainer/")
        ):
            if not (imp.lazy and where.startswith(TORCH_ZONE_LAZY)):
                found.append(f"{where}:{imp.line} imports {imp.module} (torch zone)")
            if not _within(imp.module, LAZY.get(where, TORCH_ZONE)):
                found.append(f"{where}:{imp.line} imports {imp.module} lazily (not allowed here)")
            continue
        if not _within(imp.module, allowed):
            found.append(f"{where}:{imp.line} imports {imp.module} (layer allows {allowed})")
    return found


def test_every_module_keeps_to_its_layer() -> None:
    problems = [line for path in modules() for line in violations(path)]
    assert problems == []


def test_every_module_has_a_layer() -> None:
    assert [_where(p) for p in modules() if _layer(_where(p)) is None] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import torch\n", ["imports torch"]),
        ("import llama_cpp\n", ["imports llama_cpp"]),
        ("def f():\n    import torch\n", ["imports torch"]),
        ("from bot.engine.generator import X\n", ["torch zone"]),
        ("from storage.repository import Repository\n", []),
        ("from bot.chat.service import ChatService\n", ["layer allows"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n", []),
    ],
)
def test_the_walker_catches_what_it_should(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: list[str]
) -> None:
    """The checker itself: a module of the learning layer importing what it may not."""
    module = tmp_path / "bot" / "learning" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(source, encoding="utf-8")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    found = violations(module)
    assert len(found) == len(expected)
    for line, fragment in zip(found, expected, strict=True):
        assert fragment in line
