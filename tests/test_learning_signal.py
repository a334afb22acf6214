"""Learning-signal regression test: a short pre-training run of the small-scale study's CQT-only
recipe (`experiments/small_scale.yaml`, variant `cqt_log`) must make its backbone better than the
same backbone at random init on a downstream task of the demo set.

What the study found (docs/small-scale-study.md): at this budget pre-training helps the *timbre*
task (0.875 -> 0.96-0.98 test accuracy in three runs) while pitch and key stay below random init,
so timbre is what this test guards; the margin, 5 points, is 2.4 test clips of 48. It runs the
real commands (`mertlab train` with a `probe:` section) and reads the scores back from MLflow.
"""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from mertlab.cli import main
from mertlab.data.demo import write_demo_dataset
from mertlab.data.demo_tasks import DEMO_TASKS, write_demo_task

SPEC = Path(__file__).resolve().parents[1] / "experiments" / "small_scale.yaml"
MARGIN = 0.05


@pytest.mark.slow  # failed in the first run on the merged main (see issue #17's note); make test-all runs it
def test_pretraining_beats_random_init_on_timbre(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_demo_dataset(tmp_path / "demo", progress=False)  # the quickstart's 40 pieces of 6 s
    task = write_demo_task(tmp_path / "demo-tasks", DEMO_TASKS["timbre"], progress=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main([
        "train", str(SPEC), "--no-progress",
        "-o", f"data.path={tmp_path / 'demo'}", "-o", "data.generate_demo=false", "-o", "data.target_cache=null",
        "-o", f"trainer.output_dir={tmp_path / 'runs'}", "-o", f"tracking.tracking_uri={uri}", "-o", "sweep=null",
        # variant cqt_log of the study
        "-o", "teachers.rvq=null", "-o", "objectives.rvq_pred=null",
        "-o", "teachers.cqt.params.magnitude=log", "-o", "teachers.cqt.params.normalize=global",
        "-o", f"probe.tasks=[{task}]", "-o", "probe.baselines=[]", "-o", "probe.cache_dir=null",
    ])
    assert code == 0
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("small_scale").experiment_id])
    trained = run.data.metrics["probe/timbre/accuracy"]
    random_init = run.data.metrics["probe/timbre/random_init/accuracy"]
    assert trained >= random_init + MARGIN, f"pre-trained {trained:.3f} vs random init {random_init:.3f}"
