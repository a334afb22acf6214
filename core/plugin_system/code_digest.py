"""What a component's code is, as a hash: part of a teacher's fingerprint (the target cache key).

:func:`code_digest` hashes the source of the module defining a class and of the modules of its
base classes from the same top-level package (a plugin's own modules; for the built-ins,
mertlab's, e.g. ``mertlab.toolkit.frame_features`` that ``CheckedFrameTeacher`` lives in). It
hashes each module's syntax tree without docstrings, so reformatting, comments and docstrings
do not change it and any change of the code does -- whether the package is installed editable
(where its version never changes while you iterate) or not.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path


def code_digest(cls: type) -> str | None:
    """16 hex digits of the code of ``cls``'s module and of its base classes' modules in the
    same top-level package; None when none of them has a Python source file."""
    package = cls.__module__.split(".")[0]
    modules = dict.fromkeys(c.__module__ for c in cls.__mro__ if c.__module__.split(".")[0] == package)
    parts = []
    for name in modules:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and path.endswith(".py") and Path(path).is_file():
            stat = Path(path).stat()
            parts.append([name, _source_digest(path, stat.st_mtime_ns, stat.st_size)])
    if not parts:
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=256)
def _source_digest(path: str, mtime_ns: int, size: int) -> str:
    """Hash of the file's syntax tree without docstrings (cached per version of the file)."""
    source = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return hashlib.sha256(source.encode()).hexdigest()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()
