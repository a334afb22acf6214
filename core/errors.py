"""Errors mertlab shows to users.

Every error a user can cause by bad input derives from :class:`MertlabError`; the CLI prints
its message (one line per problem) and exits 1 without a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class MertlabError(Exception):
    """Base class of user-facing errors. ``str(err)`` is the complete message to print."""


class PluginError(MertlabError):
    """A plugin failed to load, misbehaved while registering, or clashes with another."""


class UnknownComponentError(MertlabError):
    """A spec (or a call) named a component that no loaded plugin registers."""


class SpecError(MertlabError):
    """An experiment spec is invalid. Holds ``(path, message)`` problems, rendered one a line."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        lines = [
            f"{prefix}{_one_line(path)}: {_one_line(msg)}" if path else f"{prefix}{_one_line(msg)}"
            for path, msg in self.problems
        ]
        super().__init__("\n".join(lines))


def _one_line(text: str) -> str:
    """``text`` as it is when printable, else quoted: each problem stays one line."""
    text = str(text)
    return text if text.isprintable() else repr(text)


class DataError(MertlabError):
    """Audio or dataset problems: missing/empty folders, undecodable files, clips too short."""


class ObjectiveError(MertlabError):
    """An objective cannot work with the backbone/teacher it was given, or got inconsistent inputs."""


class WeightsError(MertlabError):
    """Pretrained weights are missing (nothing is downloaded) or do not fit the model."""


class BackboneOutputError(MertlabError):
    """A backbone returned output that breaks its contract (layers, shapes, padding mask)."""


class TeacherOutputError(MertlabError):
    """A teacher returned targets that break its contract (shape, dtype, range, frame count)."""


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """``(path.to.field, message)`` for each pydantic error, paths under ``prefix``."""
    head = prefix.split(".") if prefix else []
    return [(".".join(_path_part(p) for p in (*head, *err["loc"])), err["msg"]) for err in exc.errors()]


def _path_part(part: Any) -> str:
    """A key as written, or quoted when empty or unprintable (a control character must not
    break the one-line message)."""
    text = str(part)
    return text if text and text.isprintable() else repr(text)


def render_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """``path.to.field: message`` lines for each pydantic error."""
    return [f"{path}: {msg}" if path else msg for path, msg in validation_problems(exc, prefix)]
