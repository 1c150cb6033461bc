"""Markdown for the reports the package writes: the one number formatter, the one escaper
of user text, and tables built from both. Pure string functions."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["format_number", "markdown_table", "md_escape"]


def format_number(x: Any, digits: int = 3, *, sign: bool = False) -> str:
    """A number in a report: ``digits`` decimals (and a ``+`` on positive values with
    ``sign``); ``-`` for a missing value (``None`` or NaN); anything but a number as text.
    The one number formatter of the markdown reports."""
    if x is None or (isinstance(x, numbers.Real) and math.isnan(x)):
        return "-"
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return str(x)
    return f"{x:{'+' if sign else ''}.{digits}f}"


# markdown characters that user text may not use as markup, each shown as itself
_MD_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",  # first of all: no escape of the escapes below is undone
        "&": "&amp;",  # no entity: the text shows as written
        "<": "&lt;",  # no HTML tag, no <autolink>
        ">": "&gt;",
        "|": "\\|",  # no table cell break
        "`": "\\`",  # no code span (inside one, the escapes here would show)
        "\r": "",
        "\n": "⏎",  # one line: a table row or a bullet stays whole
    }
)
# a link, image or reference needs "](", "][" or "]:" (images: "![...](...)"); a bracket
# pair alone, e.g. a position range "[16, 64)", renders as itself and is left alone
_MD_LINK = re.compile(r"\](?=[(\[:])")


def md_escape(text: object) -> str:
    """User text (a label, a run name, a token, a file name) made safe inside any markdown
    file the package writes, in a table cell or in prose: no HTML (``<``, ``>``, ``&`` as
    entities), no table break (``|``), no link, image or reference definition (``]``
    escaped before ``(``, ``[`` or ``:``), no code span (`````), one line (a line break
    shows as ``⏎``); it renders as the text itself. Emphasis characters (``*``, ``_``)
    are left: they can only format, and snake_case names stay readable. The one markdown
    escaper of the package: every markdown writer passes user text through it."""
    return _MD_LINK.sub("\\\\]", str(text).translate(_MD_ESCAPES))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table; every cell goes through :func:`md_escape`."""
    lines = ["| " + " | ".join(map(md_escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(md_escape, row)) + " |" for row in rows]
    return lines
