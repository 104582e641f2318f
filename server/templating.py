"""The Jinja2 environment of the run report and the model card (templates in ``server/templates``).

HTML templates (``*.html.j2``) are autoescaped: every value from a run is escaped when it is
written, and markup comes only from the templates themselves. Markdown templates (``*.md.j2``)
are not. Filters:

=========  ==================================================================================
``num``    :func:`server.formatting.num` — ``x`` or ``x ± sd`` with ``digits`` decimals
``g``      :func:`server.formatting.general` — the shortest form (``%g``)
``pct``    :func:`server.formatting.percent` — a rate as a percentage (``± sd`` in points)
``inline`` HTML of a card text: escaped, then ```code``` → ``<code>`` and ``**x**`` → ``<strong>``
``md_cell`` a Markdown table cell (``|`` escaped)
=========  ==================================================================================

The report stays one self-contained file: its style sheet (``templates/report.css``) is
inlined at render time (the global ``stylesheet``), every figure is a data URI.
"""

from __future__ import annotations

import re
from functools import lru_cache

import jinja2
from markupsafe import Markup, escape

from server.formatting import general, num, percent

#: a ``code`` span longer than this with no space in it (a hash, a path) may break anywhere
LONG_CODE = 20

_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*(.+?)\*\*")


def _code(match: re.Match) -> str:
    text = match.group(1)
    cls = ' class="hash"' if len(text) > LONG_CODE and " " not in text else ""
    return f"<code{cls}>{text}</code>"


def inline(text: str) -> Markup:
    """A card text as HTML: escaped first, then its ```code``` and ``**strong**`` marks as tags."""
    html = str(escape(text))
    html = _CODE.sub(_code, html)
    return Markup(_STRONG.sub(r"<strong>\1</strong>", html))


def md_cell(text: object) -> str:
    """A Markdown table cell: a ``|`` in the text would end the cell."""
    return str(text).replace("|", "\\|")


def stylesheet(name: str = "report.css") -> Markup:
    """The CSS file ``templates/NAME``, to be inlined in a ``<style>`` element."""
    return Markup(environment().loader.get_source(environment(), name)[0])


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("server", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",),
                                            default=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        extensions=["jinja2.ext.do"])
    env.filters.update(num=num, g=general, pct=percent, inline=inline, md_cell=md_cell)
    env.globals.update(stylesheet=stylesheet)
    return env


def render(template: str, **context) -> str:
    """Render ``templates/TEMPLATE`` with ``context``."""
    return environment().get_template(template).render(**context)
