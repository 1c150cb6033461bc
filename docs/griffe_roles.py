"""Griffe extension of ``make docs``: Sphinx roles in docstrings become Markdown code.

The docstrings use reStructuredText roles (``:class:`Scheme```, ``:func:`~a.b.c```); the
site renders Markdown, where they would show as raw text. Each becomes a code span of the
name as written (``~`` drops the path, as in Sphinx).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def plain(text: str) -> str:
    """``:class:`~a.B``` -> ```B```, ``:func:`a.f``` -> ```a.f```."""
    return ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)


class SphinxRolesToCode(Extension):
    """Rewrites every loaded object's docstring once, before rendering."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
