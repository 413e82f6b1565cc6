"""The model's Markdown as Telegram HTML, and long text as Telegram-sized pieces.

Telegram's HTML mode is the forgiving one: only ``&``, ``<`` and ``>`` need escaping, where
MarkdownV2 needs eighteen characters escaped and rejects a whole message for one stray ``.``.
The conversion is deliberately small (bold, italic, strikethrough, inline code, code blocks,
links, headings, bullets) and always yields balanced tags; anything it cannot express stays
plain text. If Telegram still refuses the result, the caller sends the plain text instead.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from adapters.base import split_text, utf16_len

MESSAGE_LIMIT = 4096  # UTF-16 code units of visible text per message, after entity parsing

# Private-use characters mark stashed fragments (already HTML) while the rest is converted.
_OPEN, _CLOSE = "\ue000", "\ue001"
_STASHED = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

_FENCE = re.compile(
    r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n`]*(?:\n|\Z)(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.S | re.M
)
_ONE_LINE_FENCE = re.compile(r"```([^`\n]+)```")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:https?|tg|mailto):[^\s)]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+", re.M)
_INLINE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\*\*(?=\S)([^\n]*?\S)\*\*"), "b"),
    (re.compile(r"(?<!\w)__(?=\S)([^\n]*?\S)__(?!\w)"), "b"),
    (re.compile(r"~~(?=\S)([^\n]*?\S)~~"), "s"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])([^\n*]*?[^\s*])\*(?![\w*])"), "i"),
    (re.compile(r"(?<![\w_])_(?=[^\s_])([^\n_]*?[^\s_])_(?![\w_])"), "i"),
)
_TAG = re.compile(r"<(/?)([a-z]+)[^>]*>")
_FENCE_LINE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n`]*$", re.M)


def escape(text: str) -> str:
    """Escape what Telegram's HTML mode reserves: ``&``, ``<`` and ``>``."""
    return html.escape(text, quote=False)


def to_html(markdown: str, *, open_code: str | None = None) -> str:
    """Telegram HTML for ``markdown``. ``open_code`` (a language, maybe "") says the text starts
    inside a code block, as the second piece of a split reply may."""
    text = markdown.replace(_OPEN, "").replace(_CLOSE, "")
    if open_code is not None:
        text = f"```{open_code}\n{text}"
    stash: list[str] = []

    def keep(fragment: str) -> str:
        stash.append(fragment)
        return f"{_OPEN}{len(stash) - 1}{_CLOSE}"

    text = _FENCE.sub(lambda m: keep(_code_block(m[1], m[2])), text)
    text = _ONE_LINE_FENCE.sub(lambda m: keep(f"<code>{escape(m[1])}</code>"), text)
    text = _INLINE_CODE.sub(lambda m: keep(f"<code>{escape(m[1])}</code>"), text)
    text = _LINK.sub(lambda m: keep(_link(m[1], m[2])), text)
    formatted = _inline(escape(text))
    if not _balanced(formatted):
        # Crossed markers (``**a *b** c*``): keep the code and links, drop the emphasis.
        formatted = escape(text)
    return _STASHED.sub(lambda m: stash[int(m[1])], formatted)


def _code_block(language: str, code: str) -> str:
    code = code.removesuffix("\n")
    if language:
        return f'<pre><code class="language-{escape(language)}">{escape(code)}</code></pre>'
    return f"<pre>{escape(code)}</pre>"


def _link(label: str, url: str) -> str:
    return f'<a href="{html.escape(url, quote=True)}">{escape(label)}</a>'


def _inline(text: str) -> str:
    text = _HEADING.sub(r"<b>\1</b>", text)
    text = _BULLET.sub(r"\1• ", text)
    for pattern, tag in _INLINE:
        text = pattern.sub(rf"<{tag}>\1</{tag}>", text)
    return text


def _balanced(text: str) -> bool:
    stack: list[str] = []
    for match in _TAG.finditer(text):
        closing, name = match[1], match[2]
        if not closing:
            stack.append(name)
        elif not stack or stack.pop() != name:
            return False
    return not stack


@dataclass(frozen=True)
class Piece:
    """One message's worth of a reply: its Markdown, and the code block it starts inside."""

    text: str
    open_code: str | None = None

    def html(self, suffix: str = "") -> str:
        return to_html(self.text + suffix, open_code=self.open_code)


def split_reply(
    text: str, limit: int = MESSAGE_LIMIT, length: Callable[[str], int] = utf16_len
) -> list[Piece]:
    """Cut ``text`` into pieces of at most ``limit`` visible characters on natural boundaries;
    a piece cut inside a code block goes on rendering as code in the next one."""
    pieces: list[Piece] = []
    open_code: str | None = None
    for chunk in split_text(text, limit, length):
        pieces.append(Piece(chunk, open_code))
        open_code = _code_state(chunk, open_code)
    return pieces


def _code_state(chunk: str, open_code: str | None) -> str | None:
    """Whether (and in which language) a code block is still open at the end of ``chunk``."""
    for match in _FENCE_LINE.finditer(chunk):
        open_code = match[1] if open_code is None else None
    return open_code
