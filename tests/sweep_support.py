"""A tiny sweep spec for the sweep/compare tests: tiny transformer, CQT + a small BEST-RQ
teacher, a few steps per child (about a second each on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

THREE_VARIANTS = {
    "variants": {
        "base": {},
        "cqt_only": {"teachers.rvq": None, "objectives.rvq_pred": None},
        "lr_high": {"optim.lr": 0.01},
    }
}


def tiny_sweep_spec(
    name: str, demo_dir: Path, out_dir: Path, tracking_uri: str | None, sweep: dict[str, Any]
) -> dict[str, Any]:
    spec = {
        "name": name,
        "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.2},
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {
            "rvq": {"name": "bestrq", "params": {"codebook_size": 64, "n_codebooks": 2}},
            "cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}},
        },
        "objectives": {
            "rvq_pred": {"name": "masked_prediction", "teacher": "rvq"},
            "cqt_recon": {"name": "masked_regression", "teacher": "cqt", "weight": 0.5},
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "trainer": {
            "max_steps": 4,
            "log_every_n_steps": 1,
            "val_every_n_steps": 2,
            "limit_val_batches": 1,
            "output_dir": str(out_dir / "runs"),
        },
        "callbacks": {"stability": {"name": "stability", "params": {"every_n_steps": 1}}},
        "sweep": sweep,
    }
    if tracking_uri is not None:
        spec["tracking"] = {"tracking_uri": tracking_uri}
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
