"""GPU-only checks: FSDP + bf16-mixed with activation checkpointing and a sharded checkpoint,
the teachers on the fly under FSDP, and a sharded checkpoint resumed on another device count.

Marked ``gpu`` and skipped without CUDA; ``make gpu-check`` (``bench/gpu_check.py``) runs them
with ``pytest -m gpu``. Their CPU counterparts (two-process DDP, gloo) are in
``tests/test_distributed.py`` and share :mod:`wrapper_report` with the FSDP one here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from mertlab.experiment.spec import resolve_spec
from mertlab.train.run import train
from wrapper_report import check_teachers_outside, run_reports

CUDA_DEVICES = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [
    pytest.mark.integration,
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA_DEVICES == 0, reason="needs CUDA (make gpu-check runs these)"),
    pytest.mark.filterwarnings("ignore"),
]
MERTLAB = str(Path(sys.executable).parent / "mertlab")


def gpu_spec(demo_dir: Path, tmp_path: Path, tracking_uri: str, name: str, **trainer) -> dict:
    """Tiny transformer, MERT's two teachers plus BEST-RQ, all on the fly (no target cache):
    EnCodec with random weights and k-means-fitted codebooks (as the codec tests build it),
    BEST-RQ and the CQT; FSDP with bf16-mixed on CUDA."""
    return {
        "name": name,
        "seed": 0,
        "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.0},
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {
            "rvq": {"name": "encodec", "params": {"bandwidth": 1.5, "pretrained": False, "init_seconds": 2.0}},
            "codes": {"name": "bestrq", "params": {"codebook_size": 256}},
            "cqt": {"name": "cqt", "params": {"n_bins": 84, "bins_per_octave": 12}},
        },
        "objectives": {
            "rvq_pred": {"name": "masked_prediction", "teacher": "rvq"},
            "codes_pred": {"name": "masked_prediction", "teacher": "codes"},
            "cqt_recon": {"name": "masked_regression", "teacher": "cqt"},
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "trainer": {
            "max_steps": 3,
            "log_every_n_steps": 1,
            "val_every_n_steps": 3,
            "limit_val_batches": 0,
            "output_dir": str(tmp_path / "runs"),
            "accelerator": "cuda",
            "strategy": "fsdp",
            "precision": "bf16-mixed",
            **trainer,
        },
        "tracking": {"tracking_uri": tracking_uri},
        "callbacks": {},
    }


def sharded_keys(folder: Path) -> list[str]:
    """The tensor keys stored in a sharded (torch distributed checkpoint) folder."""
    from torch.distributed.checkpoint import FileSystemReader

    return list(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)


def test_fsdp_smoke_bf16_activation_checkpointing_sharded_checkpoint(demo_dir, tmp_path, tracking_uri):
    raw = gpu_spec(demo_dir, tmp_path, tracking_uri, "gpu-smoke", devices=1, activation_checkpointing=True)
    raw["teachers"] = {"cqt": raw["teachers"]["cqt"]}
    raw["objectives"] = {"cqt_recon": raw["objectives"]["cqt_recon"]}
    result = train(resolve_spec(raw), progress=False)
    last = result.checkpoint_dir / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file()  # sharded: a folder
    raw["trainer"]["max_steps"] = 6
    resumed = train(resolve_spec(raw), resume=str(last), progress=False)
    assert resumed.run_id == result.run_id


def test_fsdp_bf16_with_teachers_on_the_fly_keeps_them_float32_and_outside(demo_dir, tmp_path, tracking_uri):
    devices = min(2, CUDA_DEVICES)
    raw = gpu_spec(demo_dir, tmp_path, tracking_uri, "gpu-fsdp-teachers", devices=devices)
    reports = run_reports(raw, tmp_path)
    check_teachers_outside(reports, "FullyShardedDataParallel", steps=3, device="cuda")
    (last,) = (tmp_path / "runs" / raw["name"]).glob("*/checkpoints/last.ckpt")
    keys = sharded_keys(last)
    assert keys and any("backbone." in k for k in keys)
    assert not [k for k in keys if "teachers." in k]


def train_cli(spec: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [MERTLAB, "train", str(spec), "--no-progress", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.skipif(CUDA_DEVICES < 2, reason="resharding needs at least 2 GPUs")
def test_a_sharded_checkpoint_resumes_on_another_device_count(demo_dir, tmp_path, tracking_uri):
    """2 GPUs x 2 clips for 3 steps, then --resume on 1 GPU x 4 clips (the same global batch)
    to step 5: one MLflow run, every step logged once, the sharded checkpoint at step 5."""
    raw = gpu_spec(demo_dir, tmp_path, tracking_uri, "gpu-reshard", devices=2)
    raw["teachers"] = {"cqt": raw["teachers"]["cqt"]}
    raw["objectives"] = {"cqt_recon": raw["objectives"]["cqt_recon"]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    train_cli(spec, cwd=tmp_path)
    train_cli(
        spec,
        "--resume",
        "-o",
        "trainer.devices=1",
        "-o",
        "data.batch_size=4",
        "-o",
        "trainer.max_steps=5",
        cwd=tmp_path,
    )
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(raw["name"]).experiment_id])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/total"))
    assert steps == [0, 1, 2, 3, 4]
    last = tmp_path / "runs" / raw["name"] / run.info.run_id / "checkpoints" / "last.ckpt"
    assert torch.load(last / "meta.pt", map_location="cpu", weights_only=True)["global_step"] == 5
