"""Exact resume: a run killed with SIGKILL and resumed logs what the uninterrupted run logs.

The data stream (order, crop positions), masks, mixup and dropout are seeded by position and the
stream's position is saved in checkpoints, so the resumed run re-does the steps after its
checkpoint exactly; steps MLflow already holds are not logged twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mertlab.data.sampler import ResumableBatchSampler
from mertlab.experiment.spec import load_spec
from mertlab.train.run import train
from sampler_support import stream

pytestmark = pytest.mark.filterwarnings("ignore")

MAX_STEPS = 80
EVERY = 20  # checkpoint (and validation) interval
KILL_AFTER = 50  # logged steps before the kill: between two checkpoints
COMPARED = [
    "loss/total",
    "loss/cqt_recon",
    "acc/rvq_pred/cb0",
    "lr",
    "grad_norm/total",
    "stability/loss_spike_z",
    "val/loss/total",
]


@pytest.mark.parametrize("size, batch_size, drop_last", [(5, 2, True), (5, 2, False), (4, 2, True)])
def test_sampler_state_resumes_the_stream_at_any_batch(size, batch_size, drop_last):
    total = 4 * -(-size // batch_size)
    full = stream(ResumableBatchSampler(size, batch_size, drop_last, seed=7), total)
    epochs = [[k.index for batch in full for k in batch if k.epoch == e] for e in range(2)]
    assert epochs[0] != epochs[1] or size < 3  # a new order each epoch
    for cut in range(total):
        first = ResumableBatchSampler(size, batch_size, drop_last, seed=7)
        head = stream(first, cut)
        resumed = ResumableBatchSampler(size, batch_size, drop_last, seed=7)
        resumed.load_state_dict(first.state_dict())
        assert head + stream(resumed, total - cut) == full, cut


def spec_dict(demo_dir, out, db, experiment):
    return {
        "name": "resume-exact",
        "seed": 3,
        "data": {"path": str(demo_dir), "crop_seconds": 0.25, "batch_size": 2, "val_fraction": 0.2},
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},  # dropout 0.1: global RNG used
        "teachers": {
            "rvq": {"name": "bestrq", "params": {"codebook_size": 16, "n_codebooks": 1}},
            "cqt": {"name": "cqt", "params": {"n_bins": 12, "bins_per_octave": 4}},
        },
        "objectives": {
            "rvq_pred": {"name": "masked_prediction", "teacher": "rvq"},
            "cqt_recon": {"name": "masked_regression", "teacher": "cqt"},
        },
        "augment": {"mixup": {"probability": 0.5}},
        "optim": {"lr": 2e-3, "warmup_steps": 10, "schedule": "cosine"},
        "trainer": {
            "max_steps": MAX_STEPS,
            "log_every_n_steps": 1,
            "val_every_n_steps": EVERY,
            "limit_val_batches": 1,
            "output_dir": str(out),
        },
        "tracking": {"tracking_uri": f"sqlite:///{db}", "experiment": experiment},
        "callbacks": {"stability": {"name": "stability", "params": {"every_n_steps": 5}}},
    }


def logged_step(db, key="loss/total") -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute("SELECT max(step) FROM metrics WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return -1
    return row[0] if row and row[0] is not None else -1


def histories(client, run_id):
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in COMPARED}


@pytest.mark.integration
def test_sigkill_then_resume_equals_the_uninterrupted_run(demo_dir, tmp_path, one_thread):
    torch_threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    db = tmp_path / "mlflow.db"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(demo_dir, tmp_path / "killed", db, "killed")))
    env = {**os.environ, **torch_threads, "MERTLAB_DISABLE_AUTOLOAD": "1"}
    cmd = [sys.executable, "-m", "mertlab", "train", str(spec_path), "--no-progress"]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    # kill between two checkpoints, with steps after the checkpoint already logged
    while logged_step(db) < KILL_AFTER and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = logged_step(db)
    assert KILL_AFTER <= killed_at < MAX_STEPS

    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = train(
        load_spec(spec_path, [f"trainer.output_dir={tmp_path / 'reference'}", "tracking.experiment=reference"]),
        progress=False,
    )

    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert run.info.status == "FINISHED"
    got, want = histories(client, run.info.run_id), histories(client, reference.run_id)
    for key in COMPARED:
        steps = [s for s, _ in got[key]]
        assert len(steps) == len(set(steps)), f"{key}: a step was logged twice"
        assert steps and sorted(steps) == sorted(s for s, _ in want[key]), key
        for (step, value), (_, expected) in zip(sorted(got[key]), sorted(want[key]), strict=True):
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-6), f"{key} at step {step}"
