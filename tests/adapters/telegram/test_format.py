"""Markdown → Telegram HTML, and splitting replies into messages."""

from __future__ import annotations

import random

import pytest

from adapters.telegram.format import split_reply, to_html
from tests.fakes.telegram_server import ApiError, utf16_len, visible_text


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("plain & <simple>", "plain &amp; &lt;simple&gt;"),
        (
            "**bold** __bold__ *it* _it_ ~~gone~~",
            "<b>bold</b> <b>bold</b> <i>it</i> <i>it</i> <s>gone</s>",
        ),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4"),
        ("use `x<y` here", "use <code>x&lt;y</code> here"),
        (
            "```python\nif a < b:\n    pass\n```",
            '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>',
        ),
        ("```\nno language\n```", "<pre>no language</pre>"),
        (
            '[site](https://e.com/?a=1&b="2")',
            '<a href="https://e.com/?a=1&amp;b=&quot;2&quot;">site</a>',
        ),
        ("[bad](javascript:alert(1))", "[bad](javascript:alert(1))"),
        ("# Title\n- one\n* two", "<b>Title</b>\n• one\n• two"),
        ("**a *b** c*", "**a *b** c*"),  # crossed markers: plain rather than broken
        ("unfinished **bold", "unfinished **bold"),
        ("```js\nstill streaming", '<pre><code class="language-js">still streaming</code></pre>'),
        ("**`code` in bold**", "<b><code>code</code> in bold</b>"),
    ],
)
def test_markdown_to_telegram_html(markdown: str, html: str) -> None:
    assert to_html(markdown) == html


def test_a_piece_that_starts_inside_a_code_block_stays_code() -> None:
    assert to_html("x = 1\n```\nafter", open_code="py") == (
        '<pre><code class="language-py">x = 1</code></pre>\nafter'
    )


def test_random_markdown_always_gives_html_telegram_accepts() -> None:
    alphabet = ["*", "**", "_", "__", "`", "```", "~~", "[", "]", "(", ")", "<", ">", "&", "#"]
    alphabet += ["\n", " ", "a", "word", "https://x.org", "🙂", "- ", "\n```py\n"]
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        html = to_html(text)
        try:
            shown = visible_text(html, "HTML")
        except ApiError as exc:
            assert "text is empty" in exc.description, (text, html, exc.description)
            continue
        assert utf16_len(shown) <= utf16_len(text) + 1


def test_split_keeps_every_word_and_fits_the_limit() -> None:
    words = [f"w{i}{'🙂' * (i % 3)}" for i in range(3000)]
    text = " ".join(words[:300]) + "\n\n" + " ".join(words[300:])
    pieces = split_reply(text, limit=4096)
    assert len(pieces) >= 4
    assert all(utf16_len(p.text) <= 4096 for p in pieces)
    assert " ".join(p.text for p in pieces).split() == words
    assert pieces[0].text.endswith(words[299])  # the paragraph break was the cut


def test_split_code_block_renders_as_code_on_both_sides() -> None:
    code = "\n".join(f"line_{i} = {i}" for i in range(600))
    pieces = split_reply(f"Here:\n```python\n{code}\n```\nDone.", limit=4096)
    assert len(pieces) == 3
    assert pieces[1].open_code == "python" and pieces[2].open_code == "python"
    for piece in pieces:
        visible_text(piece.html(), "HTML")  # raises if Telegram would refuse it
    assert pieces[2].html().endswith("</code></pre>\nDone.")
    assert "line_599 = 599" in pieces[2].text
