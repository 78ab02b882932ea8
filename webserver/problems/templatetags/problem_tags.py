"""Template helpers for problem pages: safe Markdown, sizes, run badges."""

from __future__ import annotations

from typing import Any

import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

register = template.Library()

# CommonMark with tables and strikethrough. markdown-it-py, not Python-Markdown: its
# parser is linear in the input and caps nesting, where Python-Markdown took a minute
# on 20 KB of "[" and hit the recursion limit on deeply nested lists, on every view
# of a hostile description. Raw HTML passes through to nh3 below, as before.
_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
# Let every link through to nh3, which drops the href of any scheme not allowed below
# (markdown-it would leave a refused link as its raw "[text](url)" source).
_MARKDOWN.validateLink = lambda url: True  # type: ignore[method-assign]

# What a problem description may use once rendered: text formatting, lists,
# tables, code, links and images; no scripts, styles, forms or event handlers.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "div", "dl", "dt", "em", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table",
    "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "th": {"align"},
    "td": {"align"},
    "code": {"class"},
    "div": {"class"},
    "span": {"class"},
}


@register.filter(name="markdown")
def render_markdown(text: Any) -> SafeString:
    """Markdown rendered to HTML, then sanitised (problem descriptions are written by users)."""
    html = _MARKDOWN.render(str(text or ""))
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 just above


@register.filter
def filesize(size: int) -> str:
    """Bytes as a short human size."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@register.filter
def short_hash(value: str) -> str:
    """The first 12 hex digits of a hash, for tables (the full one is in the title attribute)."""
    return str(value or "")[:12]


@register.filter
def setting(config: dict[str, Any], key: str) -> Any:
    """`config[key]` in templates, where keys contain underscores."""
    return (config or {}).get(key, "")
