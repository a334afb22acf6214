"""Checks shared by the tests of teachers fitted offline (``kmeans``, ``melrvq``): the errors
for a missing, mismatched or damaged state file, which must tell the user what to run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mertlab.errors import MertlabError
from synth_audio import melody, padded_batch

Build = Callable[..., Any]


def assert_missing_state_says_fit(build: Build, state_param: str, tmp_path: Path) -> None:
    """Targets without a state file, or from a path that does not exist, say to run
    `mertlab teachers fit SPEC` (and which param names the file)."""
    wav, lengths = padded_batch([melody(0.3)])
    with pytest.raises(MertlabError, match=rf"set params.{state_param} .* `mertlab teachers fit SPEC`"):
        build().targets(wav, lengths)
    with pytest.raises(MertlabError, match=r"not found; run `mertlab teachers fit SPEC`"):
        build(**{state_param: str(tmp_path / "nope.pt")}).targets(wav, lengths)


def assert_bad_state_is_rejected(
    build: Build,
    state_param: str,
    state_file: Path,
    tmp_path: Path,
    other_settings: dict[str, Any],
    settings_message: str,
    junk_message: str,
) -> None:
    """A state fitted with other settings, a file that is not a state and saving an unfitted
    teacher are each one clear error."""
    with pytest.raises(MertlabError, match=settings_message):
        build(**other_settings, **{state_param: str(state_file)})
    junk = tmp_path / "junk.pt"
    junk.write_text("not torch")
    with pytest.raises(MertlabError, match=junk_message):
        build(**{state_param: str(junk)})
    with pytest.raises(MertlabError, match="not fitted"):
        build().save_state(tmp_path / "x.pt")
