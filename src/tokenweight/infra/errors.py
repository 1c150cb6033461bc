"""The one exception type users see.

Every user-facing error is a :class:`TokenWeightError`. It subclasses ``ValueError`` so
that code catching bad-argument errors generically still works, and the command line
prints its message (no traceback) and exits with status 2.
"""

from __future__ import annotations


class TokenWeightError(ValueError):
    """Bad input or configuration; the message says what was wrong and how to fix it."""
