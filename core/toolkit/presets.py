"""Named presets of a component's params (``preset: tiny``): one rule for every backbone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def fill_preset(data: Any, presets: Mapping[str, Mapping[str, Any]]) -> Any:
    """Raw params with the fields of their named ``preset`` filled in where the user left them
    unset (explicit values always win); anything else is returned as it is, for pydantic to judge.
    Use in a ``model_validator(mode="before")`` of the ``Params``."""
    if isinstance(data, dict) and isinstance(data.get("preset"), str) and data["preset"] in presets:
        return {**presets[data["preset"]], **data}
    return data
