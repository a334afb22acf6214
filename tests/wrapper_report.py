"""Trains a spec with a callback that reports what the parallel wrapper holds (run as a script).

    python tests/wrapper_report.py SPEC.json OUT_DIR

(:func:`run_reports` runs it and reads the reports; :func:`check_teachers_outside` checks them:
the DDP test on CPU and the FSDP test on GPUs share both.)

``SPEC.json`` is raw spec data; the ``wrapper_report`` callback (registered here through the
real ``register_callbacks`` hook) is added to it. Under DDP Lightning's launcher runs this
script once more per further rank; each rank writes ``OUT_DIR/rank<N>.json``: the tensors DDP
registered and broadcasts, the teachers' dtypes, and for each training step whether autocast
was on while the targets were computed, their dtypes and their largest difference from the
same targets computed with autocast off.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pydantic import Field

from mertlab.contracts import Params
from mertlab.hookspecs import hookimpl


class ReportParams(Params):
    out: str = Field("reports", description="Folder of the per-rank JSON reports.")


class WrapperReport(L.Callback):
    name = "wrapper_report"
    summary = "test probe: what DDP registers, teacher dtypes under autocast"
    Params = ReportParams

    def __init__(self, params: ReportParams) -> None:
        self.params = params
        self.steps: list[dict[str, Any]] = []
        self.wrapper: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        compute = pl_module.compute_targets

        def recorded(batch, num_frames, frame_lengths):
            device = batch.wav.device.type
            targets = compute(batch, num_frames, frame_lengths)
            with torch.autocast(device_type=device, enabled=False):
                reference = compute(batch, num_frames, frame_lengths)
            self.steps.append(
                {
                    "autocast": torch.is_autocast_enabled(device),
                    "autocast_dtype": str(torch.get_autocast_dtype(device)),
                    "batch_dtypes": [str(batch.wav.dtype), str(batch.start_seconds.dtype)],
                    "target_dtypes": {alias: str(t.values.dtype) for alias, t in targets.items()},
                    "max_diff": max(
                        float((t.values.double() - reference[alias].values.double()).abs().max())
                        for alias, t in targets.items()
                    ),
                }
            )
            return targets

        pl_module.compute_targets = recorded

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        wrapper = trainer.strategy.model
        teacher_tensors = [
            t for teacher in pl_module.teachers.values() for t in (*teacher.parameters(), *teacher.buffers())
        ]
        ids = {id(t) for t in teacher_tensors} | {t.data_ptr() for t in teacher_tensors if t.numel()}
        # what the wrapper reaches: its module's tensors, and what DDP registered to broadcast
        registered = [*wrapper.parameters(), *wrapper.buffers(), *getattr(wrapper, "modules_buffers", [])]
        self.wrapper = {
            "wrapper": type(wrapper).__name__,
            "broadcast_buffers": getattr(wrapper, "broadcast_buffers", None),
            "wrapper_buffers": len(getattr(wrapper, "modules_buffers", [])),
            "wrapper_tensors": len(registered),
            "teacher_tensors": len(teacher_tensors),
            "teacher_buffer_bytes": sum(
                b.numel() * b.element_size() for teacher in pl_module.teachers.values() for b in teacher.buffers()
            ),
            "teacher_tensors_in_wrapper": sum(
                1 for t in registered if id(t) in ids or (t.numel() and t.data_ptr() in ids)
            ),
            "teacher_dtypes": sorted(
                {str(t.dtype) for t in teacher_tensors if t.is_floating_point() or t.is_complex()}
            ),
            "teacher_devices": sorted({str(t.device) for t in teacher_tensors}),
            "module_keys_of_teachers": [
                name
                for name, _ in (*pl_module.named_parameters(), *pl_module.named_buffers())
                if name.startswith("teachers.")
            ],
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        out = Path(self.params.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"rank": trainer.global_rank, "world": trainer.world_size, **self.wrapper, "steps": self.steps}
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report, indent=1))


@hookimpl
def register_callbacks(register) -> None:
    register(WrapperReport)


def run_reports(raw: dict[str, Any], folder: Path, timeout: float = 600) -> list[dict[str, Any]]:
    """Train ``raw`` through this script in a fresh process (Lightning's launcher starts one per
    further rank) from ``folder``; the reports of every rank, in rank order."""
    import os
    import subprocess

    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(spec_path), str(folder / "reports")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    reports = sorted(
        (json.loads(p.read_text()) for p in (folder / "reports").glob("rank*.json")), key=lambda r: r["rank"]
    )
    assert reports and len(reports) == reports[0]["world"], [r["rank"] for r in reports]
    return reports


def check_teachers_outside(reports: list[dict[str, Any]], wrapper: str, steps: int, device: str) -> None:
    """Every rank: the wrapper reached no teacher tensor, the teachers stayed float32 on
    ``device``, every step computed their targets under bf16 autocast from the float32 audio,
    in float32 (discrete: int64) and equal to the autocast-off targets."""
    for report in reports:
        assert report["wrapper"] == wrapper, report["wrapper"]
        assert report["teacher_tensors"] > 0 and report["teacher_buffer_bytes"] > 0
        assert report["wrapper_tensors"] > 0 and report["teacher_tensors_in_wrapper"] == 0
        assert report["module_keys_of_teachers"] == []
        assert set(report["teacher_dtypes"]) <= {"torch.float32", "torch.complex64"}, report["teacher_dtypes"]
        assert all(d.startswith(device) for d in report["teacher_devices"]), report["teacher_devices"]
        assert len(report["steps"]) == steps
        for step in report["steps"]:
            assert step["autocast"] and step["autocast_dtype"] == "torch.bfloat16", step
            # the batch as the data module made it (Lightning's FSDP plugin turns float64 into float32)
            wav, start = step["batch_dtypes"]
            assert wav == "torch.float32" and start in ("torch.float64", "torch.float32"), step
            assert set(step["target_dtypes"].values()) <= {"torch.float32", "torch.int64"}, step
            assert step["max_diff"] == 0.0, step


def main(spec_path: str, out: str) -> None:
    from mertlab.experiment.spec import resolve_spec
    from mertlab.plugin_system.plugin_manager import PluginSource, create_plugin_manager
    from mertlab.plugin_system.registry import Registry
    from mertlab.train.run import train

    pm = create_plugin_manager(autoload=False)
    pm.register_source(sys.modules[__name__], PluginSource("wrapper_report"))
    registry = Registry(pm)
    raw = json.loads(Path(spec_path).read_text())
    raw.setdefault("callbacks", {})["report"] = {"name": "wrapper_report", "params": {"out": out}}
    train(resolve_spec(raw, registry=registry), registry=registry, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])
