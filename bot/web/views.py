"""Rendering: one Jinja2 environment, autoescaped everywhere, and the view-shaped data the
templates need (the adapter lineage tree, the gate's verdict of a version)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from bot.types import AdapterVersion

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "—"


def _version(value: int | None) -> str:
    return "base" if value is None else f"v{value}"


def environment() -> jinja2.Environment:
    """Autoescape on for every template, whatever its name: users' text is always escaped."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        urlkey=lambda key: quote(str(key), safe=":"),
        when=_when,
        version=_version,
        vote=lambda value: "👍" if value > 0 else "👎",
    )
    return env


def html(env: jinja2.Environment, name: str, status: int = 200, **context: Any) -> web.Response:
    """A rendered page that no cache keeps (it shows users' words)."""
    text = env.get_template(name).render(**context)
    return web.Response(text=text, status=status, content_type="text/html")


@dataclass
class Node:
    """A version and the versions trained from it."""

    version: AdapterVersion
    children: list[Node] = field(default_factory=list)

    @property
    def gate(self) -> Mapping[str, Any]:
        gate = self.version.hyperparams.get("gate")
        return gate if isinstance(gate, Mapping) else {}

    @property
    def run_id(self) -> Any:
        return self.version.hyperparams.get("training_run_id")


def lineage(versions: Sequence[AdapterVersion]) -> list[Node]:
    """The versions as a forest: each under its parent, the roots trained from the base."""
    nodes = {v.version: Node(v) for v in versions}
    roots: list[Node] = []
    for node in nodes.values():
        parent = nodes.get(node.version.parent) if node.version.parent is not None else None
        (parent.children if parent else roots).append(node)
    return roots
