"""`help_html`: a form's help text with `x` shown as <code>x</code>.

Help texts are plain text written in the forms; the backticks they use to mark a
command or a key (`flwr build`) showed as they are. Everything else is escaped first,
so only the <code> elements this filter adds are HTML. A help text already marked safe
(Django's password rules are HTML) is kept as it is.
"""

from __future__ import annotations

import re
from typing import Any

from django import template
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

_CODE_SPAN = re.compile(r"`([^`\n]+)`")


@register.filter
def help_html(text: Any) -> SafeString:
    escaped = str(conditional_escape(text))
    return mark_safe(_CODE_SPAN.sub(r"<code>\1</code>", escaped))  # noqa: S308 - escaped just above
