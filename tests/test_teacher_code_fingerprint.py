"""A teacher's fingerprint (the target cache key) sees its code; `mertlab targets clean` removes
the folders no teacher of a spec uses any more."""

from __future__ import annotations

import sys

import pytest

from mertlab.cli import main
from mertlab.plugin_system.registry import get_registry, reset_registry

TEACHER = '''
"""An energy teacher."""
import torch
from pydantic import Field
from mertlab.contracts import FrameTeacher, Params
from mertlab.hookspecs import hookimpl


class P(Params):
    sample_rate: int = Field(24000, description="rate")
    hop_length: int = Field(320, description="hop")


class Energy(FrameTeacher):
    name = "energy_fp"
    summary = "frame energy"
    Params = P
    target_kind = "continuous"
    dim = 1

    def compute(self, wav):
        frames = self.num_frames(wav.shape[1])
        chunks = torch.nn.functional.pad(wav, (0, frames * 320 - wav.shape[1])).reshape(wav.shape[0], frames, 320)
        return chunks.pow(2).mean(-1, keepdim=True){change}


@hookimpl
def register_teachers(register):
    register(Energy)
'''


@pytest.fixture
def module(fake_dist):
    """The plugin's source file, installed fresh (no module of another test's copy imported)."""
    sys.modules.pop("energy_fp_mod", None)
    yield fake_dist("energy-fp", "energy_fp_mod", TEACHER.replace("{change}", "")) / "energy_fp_mod.py"
    sys.modules.pop("energy_fp_mod", None)


def rewrite(module, change: str) -> None:
    """Edit the plugin's source as an author iterating on an editable install does; the next
    process (here: a fresh import) runs the new code."""
    module.write_text(TEACHER.replace("{change}", change))
    sys.modules.pop("energy_fp_mod", None)
    reset_registry()


def fingerprint() -> str:
    return get_registry().build("teacher", "energy_fp", {}).fingerprint()


def test_fingerprint_follows_code_not_comments_or_docstrings(module):
    first = fingerprint()
    cosmetic = TEACHER.replace('"""An energy teacher."""', '"""Energy per frame."""\n# a comment')
    module.write_text(cosmetic.replace("{change}", "  # squared"))
    sys.modules.pop("energy_fp_mod", None)
    reset_registry()
    assert fingerprint() == first
    rewrite(module, " * 2")
    assert fingerprint() != first


def test_an_edited_teacher_is_recomputed_and_clean_removes_the_old_folder(
    module, demo_dir, tmp_path, write_yaml, capsys
):
    cache = tmp_path / "cache"
    spec = write_yaml(
        {
            "name": "fp",
            "data": {"path": str(demo_dir), "target_cache": str(cache), "crop_seconds": 1.0},
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {"e": {"name": "energy_fp"}},
            "objectives": {"o": {"name": "masked_regression", "teacher": "e"}},
        }
    )
    assert main(["targets", "build", str(spec), "--no-progress"]) == 0
    assert "6 files computed, 0 already cached" in capsys.readouterr().out
    (old,) = cache.iterdir()
    rewrite(module, " * 2")
    assert main(["targets", "build", str(spec), "--no-progress"]) == 0
    assert "6 files computed, 0 already cached" in capsys.readouterr().out  # not the stale targets
    (new,) = set(cache.iterdir()) - {old}
    (cache / "notes").mkdir()  # not a target folder: never touched
    assert main(["targets", "clean", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"would remove {old} (teacher 'energy_fp', fingerprint {old.name.rsplit('-', 1)[1]}, ")
    assert out[-1].startswith("1 folder(s), ") and out[-1].endswith("would be freed") and old.is_dir()
    assert main(["targets", "clean", str(spec)]) == 0
    assert sorted(cache.iterdir()) == sorted([new, cache / "notes"])
    assert main(["targets", "clean", str(spec)]) == 0
    assert "every target folder is used" in capsys.readouterr().out
