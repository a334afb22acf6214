"""Griffe extension for the API reference: reST markup in mertlab's docstrings, as Markdown.

The docstrings are written for reading in code and in ``help()``: Sphinx roles
(:class:`Teacher`, :meth:`fit`...) and a paragraph ending in ``::`` before a literal block.
Markdown has neither, so a role becomes inline code and ``::`` a colon (the indented block
after it is already a Markdown code block).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``:role:`target``` (optionally ``:py:role:``) -> ``target`` in backticks; ``~`` keeps the last part.
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const):`~?([^`]+)`")
#: A line ending in ``::`` (reST's "literal block follows"), not a bare ``::`` line.
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)


def markdown_from_rest(text: str) -> str:
    """The docstring ``text`` with Sphinx roles as inline code and ``::`` markers as colons."""
    return _LITERAL_MARKER.sub(":", _ROLE.sub(r"`\1`", text))


class RestMarkup(griffe.Extension):
    """Rewrites every loaded docstring with :func:`markdown_from_rest`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_from_rest(obj.docstring.value)
