"""The spec's ``probe:`` section: `mertlab train` probes its final checkpoint, `mertlab sweep`
every child (idempotently), and `mertlab compare` shows the probe scores first."""

from __future__ import annotations

import re

import pytest
import yaml
from mlflow.tracking import MlflowClient

import mertlab.probe.run as probe_run_module
from mertlab.cli import main
from mertlab.errors import SpecError
from mertlab.experiment.compare import load_comparison, to_text
from mertlab.experiment.spec import load_spec
from probe_tasks import write_pitch_class_task
from sweep_support import tiny_sweep_spec, write_spec

pytestmark = pytest.mark.filterwarnings("ignore")

PROBE = {
    "layers": "all",
    "window_seconds": 5.0,
    "baselines": ["chroma"],
    "random_init": True,
    "max_epochs": 15,
    "patience": 5,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_dir):
    root = tmp_path_factory.mktemp("probe-exp")
    write_pitch_class_task(root, clips=48)
    spec = tiny_sweep_spec(
        "probe-sweep",
        demo_dir,
        root,
        f"sqlite:///{root / 'mlflow.db'}",
        {"variants": {"base": {}, "cqt_only": {"teachers.rvq": None, "objectives.rvq_pred": None}}},
    )
    spec["probe"] = {"tasks": ["pitch.csv"], **PROBE}  # relative to the working directory
    return root, write_spec(root / "sweep.yaml", spec)


def test_probe_section_validates_strictly(workdir, monkeypatch):
    root, spec_path = workdir
    monkeypatch.chdir(root)
    spec = load_spec(spec_path)
    assert spec.probe.tasks == ["pitch.csv"] and spec.probe.baselines == ["chroma"] and spec.probe.cache_dir
    assert load_spec(spec_path, ["probe=null"]).probe is None
    for override, message in (
        ("probe.baselines=[mfcc,spectral]", "probe.baselines: .*unknown baseline 'spectral'"),
        ("probe.layers=six", "probe.layers: .*expected all, last"),
        ("probe.windows=3", "probe.windows: Extra inputs are not permitted"),
        ("probe.tasks=[]", "probe.tasks: "),
        ("probe.window_seconds=0", "probe.window_seconds: "),
    ):
        with pytest.raises(SpecError, match=message):
            load_spec(spec_path, [override])


@pytest.mark.integration
def test_sweep_probes_every_child_and_compare_shows_the_scores_first(workdir, monkeypatch, capsys):
    root, spec_path = workdir
    monkeypatch.chdir(root)
    assert main(["sweep", str(spec_path), "--no-progress"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("probe-sweep").experiment_id],
        filter_string="tags.`mertlab.sweep` = 'probe-sweep'",
    )
    comparison = load_comparison(next(r for r in parent if "mlflow.parentRunId" not in r.data.tags).info.run_id, uri)
    assert [r.variant for r in comparison.rows] == ["base", "cqt_only"]
    for row in comparison.rows:
        for name in (
            "probe/pitch/accuracy",
            "probe/pitch/best_layer/accuracy",
            "probe/pitch/weighted/accuracy",
            "probe/pitch/random_init/accuracy",
            "probe/pitch/baseline_chroma/accuracy",
            "probe/pitch/majority/accuracy",
        ):
            assert name in row.final, (row.variant, sorted(row.final))
        assert client.get_run(row.run_id).data.tags["probe/pitch/settings"]
    # the probe scores are the first rows of the table, then the losses
    assert comparison.metrics[:8] == [
        "probe/pitch/accuracy",
        "probe/pitch/accuracy_p_vs_baseline",
        "probe/pitch/accuracy_p_vs_random",
        "probe/pitch/best_layer/accuracy",
        "probe/pitch/weighted/accuracy",
        "probe/pitch/random_init/accuracy",
        "probe/pitch/baseline_chroma/accuracy",
        "probe/pitch/majority/accuracy",
    ]
    assert comparison.metrics[8].startswith("loss/")
    body = to_text(comparison).splitlines()
    first_metric = next(line for line in body if line.startswith("probe/"))  # after variant, status, run id, overrides
    assert re.match(r"probe/pitch/accuracy +[\d.]+ \[[\d.]+, [\d.]+\] +[\d.]+ \[[\d.]+, [\d.]+\]$", first_metric)
    assert not any(line.startswith("probe/pitch/accuracy_ci") for line in body)
    assert to_text(comparison) in out
    # the comparison on the parent holds the bars and one per-layer figure with both children
    artifacts = {a.path for a in client.list_artifacts(comparison.parent_run_id, "compare")}
    assert {"compare/final_metrics.png", "compare/probe_pitch_accuracy_layers.png"} <= artifacts
    histories = {r.run_id: len(client.get_metric_history(r.run_id, "probe/pitch/accuracy")) for r in comparison.rows}
    assert set(histories.values()) == {1}

    # Re-running the sweep skips the finished children *and* their probes: nothing is extracted.
    def no_extraction(*args, **kwargs):
        raise AssertionError("features extracted again")

    monkeypatch.setattr(probe_run_module, "extract_features", no_extraction)
    assert main(["sweep", str(spec_path), "--no-progress"]) == 0
    assert {
        r.run_id: len(client.get_metric_history(r.run_id, "probe/pitch/accuracy")) for r in comparison.rows
    } == histories
    # Each child logged where its time went once (the re-run did not), at its last step like the
    # run summary, with the training and the probe phases in it.
    for row in comparison.rows:
        (total,) = client.get_metric_history(row.run_id, "time/total_s")
        (final_loss,) = client.get_metric_history(row.run_id, "summary/final_loss")
        assert total.step == final_loss.step > 0
        assert {"time/training_s", "time/probe_fits_s"} <= set(client.get_run(row.run_id).data.metrics)


@pytest.mark.integration
def test_train_with_a_probe_section_prints_a_verdict_per_task(workdir, monkeypatch, capsys):
    root, spec_path = workdir
    monkeypatch.chdir(root)
    spec = yaml.safe_load(spec_path.read_text())
    spec.update(name="probe-train", sweep=None)
    train_spec = write_spec(root / "train.yaml", spec)
    assert main(["train", str(train_spec), "--no-progress", "-o", "probe.random_init=false"]) == 0
    out = capsys.readouterr().out
    assert "probing the final checkpoint on 1 task(s)" in out and "strongest baseline" in out
    lines = out.strip().splitlines()
    verdicts = [line for line in lines if line.startswith("pitch: ")]
    assert len(verdicts) == 1 and lines.index(verdicts[0]) > lines.index(
        "probing the final checkpoint on 1 task(s) (probe: section)"
    )
    verdict = verdicts[0]  # after the table; the links into the MLflow UI close the output
    assert re.match(r"pitch: \d+% \[\d+, \d+\] \(best baseline chroma \d+% \[\d+, \d+\], p[=<][\d.]+\)$", verdict)
    assert lines[-1].startswith("    its experiment's runs: http://localhost:5000/#/experiments/")
    assert "random init" not in verdict
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("probe-train").experiment_id])[0]
    assert "loss/total" in run.data.metrics and "probe/pitch/baseline_chroma/accuracy" in run.data.metrics
    # where the time went: one table before the verdict, every phase logged as time/<phase>_s
    table = out[out.index("where the time went") : out.index(verdict)]
    phases = ("startup", "data", "setup", "target_cache", "training", "validation", "probe_features", "probe_fits")
    for phase in (*phases, "probe_baselines", "probe_logging", "other", "total"):
        assert re.search(rf"^{phase} +[\d.]+ +[\d.]+% +[\d.]+$", table, re.M), (phase, table)
        assert run.data.metrics[f"time/{phase}_s"] >= 0 and f"time/{phase}_cpu_s" in run.data.metrics
    times = {k: v for k, v in run.data.metrics.items() if k.startswith("time/") and not k.endswith("_cpu_s")}
    assert sum(v for k, v in times.items() if k != "time/total_s") == pytest.approx(times["time/total_s"], abs=0.05)
    assert run.data.metrics["time/training_s"] > 0 and run.data.metrics["time/probe_fits_s"] > 0
    # -o probe=null: no probing at all
    assert main(["train", str(train_spec), "--no-progress", "-o", "probe=null"]) == 0
    assert "probing" not in capsys.readouterr().out
