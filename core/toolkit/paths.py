"""Paths built from spec values or file contents stay inside the folder they belong to."""

from __future__ import annotations

from pathlib import Path

from mertlab.errors import MertlabError


def inside(root: str | Path, *parts: str, what: str = "path") -> Path:
    """``root / parts...``, refused (one line naming ``what``) unless it resolves inside
    ``root``: a value such as ``../../x`` or an absolute path cannot escape it."""
    root = Path(root)
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()) or path.resolve() == root.resolve():
        raise MertlabError(f"{what}: {'/'.join(parts)!r} would leave {root}")
    return path
