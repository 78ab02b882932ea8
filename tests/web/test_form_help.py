"""Help texts show `x` as code, never raw backticks, and stay escaped text otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils.safestring import mark_safe

from webserver.problems.templatetags.form_help import help_html

pytestmark = [pytest.mark.web]


def test_backticks_become_code_and_html_is_escaped() -> None:
    assert help_html("The .fab file `flwr build` writes.") == "The .fab file <code>flwr build</code> writes."
    assert help_html("`<b>` & <script>alert(1)</script>") == (
        "<code>&lt;b&gt;</code> &amp; &lt;script&gt;alert(1)&lt;/script&gt;"
    )
    # A lone backtick, and one whose pair is on another line, stay as written.
    assert help_html("a ` b\nc ` d") == "a ` b\nc ` d"
    # Help texts that are HTML already (Django's password rules) are not escaped twice.
    assert help_html(mark_safe("<ul><li>`x`</li></ul>")) == "<ul><li><code>x</code></li></ul>"


@pytest.mark.django_db
def test_the_problem_editor_shows_no_raw_backticks(users: dict[str, Any]) -> None:
    client = Client()
    client.force_login(users["owner"])
    page = client.get("/problems/new/").content.decode()
    assert "<code>flwr build</code>" in page
    assert "<code>key = value</code>" in page and "<code>[tool.flwr.app.config]</code>" in page
    assert "`" not in page.split("<main", 1)[1].split("</main>", 1)[0]
