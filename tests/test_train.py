"""The main job end to end: short real runs tracked in MLflow, learning, resume, bad input."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.experiment.spec import dump_spec, resolve_spec
from mertlab.train.module import PretrainModule
from mertlab.train.run import train

pytestmark = pytest.mark.filterwarnings("ignore")


def make_spec(
    demo_dir, tmp_path, tracking_uri, backbone="transformer", discrete="encodec", discrete_params=None, **overrides
):
    raw = {
        "name": f"test-{backbone}-{discrete}",
        "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.2},
        "backbone": {"name": backbone, "params": {"preset": "tiny"}},
        "teachers": {
            "rvq": {
                "name": discrete,
                "params": discrete_params if discrete_params is not None else {"bandwidth": 1.5, "pretrained": False},
            },
            "cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}},
        },
        "objectives": {
            "rvq_pred": {"name": "masked_prediction", "teacher": "rvq"},
            "cqt_recon": {"name": "masked_regression", "teacher": "cqt", "weight": 0.5},
        },
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "trainer": {
            "max_steps": 6,
            "log_every_n_steps": 2,
            "val_every_n_steps": 3,
            "limit_val_batches": 1,
            "output_dir": str(tmp_path / "runs"),
        },
        "tracking": {"tracking_uri": tracking_uri},
        "callbacks": {"stability": {"name": "stability", "params": {"every_n_steps": 2}}},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return resolve_spec(raw)


METRIC_FAMILIES = [
    "loss/total",
    "loss/rvq_pred",
    "loss/cqt_recon",
    "acc/rvq_pred/cb0",
    "acc/rvq_pred/cb1",
    "lr",
    "grad_norm/total",
    "grad_norm/head.rvq_pred",
    "update_ratio/total",
    "attn/max_logit/layer0",
    "act_rms/layer0",
    "stability/nonfinite_steps",
    "stability/skipped_steps",
    "stability/loss_spike_z",
    "teacher/rvq/code_perplexity/cb0",
    "throughput/audio_seconds_per_s",
    "throughput/samples_per_s",
    "val/loss/total",
]


@pytest.mark.integration
@pytest.mark.parametrize(
    "backbone, discrete, discrete_params",
    [
        ("transformer", "encodec", None),
        ("conformer", "bestrq", {"codebook_size": 64, "n_codebooks": 2}),
    ],
)
def test_short_run_logs_every_metric_family(demo_dir, tmp_path, tracking_uri, backbone, discrete, discrete_params):
    spec = make_spec(demo_dir, tmp_path, tracking_uri, backbone, discrete, discrete_params)
    result = train(spec, progress=False)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    metrics = run.data.metrics
    for name in METRIC_FAMILIES:
        assert name in metrics, f"{name} not logged; have {sorted(metrics)}"
        assert math.isfinite(metrics[name]), name
    assert any(k.startswith("grad_norm/layer") for k in metrics)
    assert metrics["stability/nonfinite_steps"] == 0
    assert run.data.params["backbone.name"] == backbone and run.data.params["optim.lr"] == "0.001"
    assert run.data.tags["mertlab.version"] and run.data.tags["mertlab.teacher.cqt.source"] == "builtin"
    artifacts = [a.path for a in client.list_artifacts(result.run_id)]
    assert "spec.yaml" in artifacts
    spec_text = open(client.download_artifacts(result.run_id, "spec.yaml", str(tmp_path))).read()
    assert spec_text == dump_spec(spec)
    assert (result.checkpoint_dir / "last.ckpt").is_file()
    assert len(client.get_metric_history(result.run_id, "loss/total")) >= 3


@pytest.mark.integration  # slow: 80 optimizer steps, about 2 min of CPU
def test_learning_is_connected_on_a_fixed_batch(demo_dir, tmp_path, tracking_uri):
    """Masked accuracy rises far above chance and both losses fall when fitting one batch."""
    torch.manual_seed(0)
    spec = make_spec(demo_dir, tmp_path, tracking_uri, augment={"mixup": {"probability": 0.0}})
    module = PretrainModule(spec)
    from mertlab.data.datamodule import AudioDataModule

    dm = AudioDataModule(spec.data, module.backbone.sample_rate)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    optimizer = torch.optim.Adam([p for n, p in module.named_parameters() if not n.startswith("teachers.")], lr=2e-3)
    module.train()
    history = []
    for _ in range(80):
        loss, logs, _ = module.shared_step(batch, 0, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: float(v) for k, v in logs.items()})
    first, last = history[0], history[-1]
    chance = 1 / 1024
    assert last["acc/rvq_pred/cb0"] > 50 * chance, last
    assert last["loss/rvq_pred"] < 0.8 * first["loss/rvq_pred"], (first, last)
    assert last["loss/cqt_recon"] < 0.5 * first["loss/cqt_recon"], (first, last)


@pytest.mark.integration
def test_resume_continues_step_optimizer_and_mlflow_run(demo_dir, tmp_path, tracking_uri):
    spec = make_spec(demo_dir, tmp_path, tracking_uri, name="resume-test", trainer={"max_steps": 4})
    first = train(spec, progress=False)
    more = make_spec(demo_dir, tmp_path, tracking_uri, name="resume-test", trainer={"max_steps": 8})
    second = train(more, resume=True, progress=False)
    assert second.run_id == first.run_id
    ckpt = torch.load(second.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8
    adam_state = next(iter(ckpt["optimizer_states"][0]["state"].values()))
    assert int(adam_state["step"]) == 8
    client = MlflowClient(tracking_uri)
    steps = [m.step for m in client.get_metric_history(first.run_id, "loss/total")]
    assert max(steps) >= 6 and min(steps) <= 2
    experiment = client.get_experiment_by_name("resume-test")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


@pytest.mark.integration
def test_bad_training_input_gives_one_clear_error(demo_dir, tmp_path, tracking_uri, write_yaml, capsys):
    spec = make_spec(demo_dir, tmp_path, tracking_uri).model_dump(mode="json")
    spec["objectives"]["cqt_recon"]["teacher"] = "rvq"
    code, err = run_cli(capsys, "validate", str(write_yaml(spec, "kind.yaml")))
    assert code == 1 and "objectives.cqt_recon.teacher: objective 'masked_regression' needs continuous targets" in err

    spec = make_spec(demo_dir, tmp_path, tracking_uri).model_dump(mode="json")
    code, err = run_cli(
        capsys, "train", str(write_yaml(spec, "long.yaml")), "-o", "data.crop_seconds=30", "--no-progress"
    )
    assert code == 1 and "data.crop_seconds: 30 s is longer than every file" in err

    (tmp_path / "empty").mkdir()
    code, err = run_cli(
        capsys, "train", str(write_yaml(spec, "empty.yaml")), "-o", f"data.path={tmp_path / 'empty'}", "--no-progress"
    )
    assert code == 1 and "data.path: no audio files" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_tracking_uri_resolution(demo_dir, tmp_path, tracking_uri, monkeypatch):
    from mertlab.experiment.tracking import resolve_tracking_uri, ui_command

    spec = make_spec(demo_dir, tmp_path, tracking_uri, tracking={"tracking_uri": None})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/runs.db")
    assert resolve_tracking_uri(spec) == "sqlite:////elsewhere/runs.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(spec) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = ui_command(resolve_tracking_uri(spec))
    assert command.endswith("mertlab ui")
    assert subprocess.run([command.split()[0], "--version"], capture_output=True).returncode == 0  # runnable as printed
    assert ui_command("sqlite:////elsewhere/runs.db").endswith("mertlab ui --tracking-uri sqlite:////elsewhere/runs.db")
    assert resolve_tracking_uri(make_spec(demo_dir, tmp_path, tracking_uri)) == tracking_uri


@pytest.mark.integration
def test_bf16_mixed_precision_run_is_finite(demo_dir, tmp_path, tracking_uri):
    spec = make_spec(
        demo_dir,
        tmp_path,
        tracking_uri,
        discrete="bestrq",
        discrete_params={"codebook_size": 64},
        name="bf16",
        trainer={"max_steps": 3, "precision": "bf16-mixed", "limit_val_batches": 0},
    )
    result = train(spec, progress=False)
    metrics = MlflowClient(tracking_uri).get_run(result.run_id).data.metrics
    assert math.isfinite(metrics["loss/total"]) and metrics["stability/nonfinite_steps"] == 0


@pytest.mark.integration
def test_train_cli_prints_a_summary(demo_dir, tmp_path, tracking_uri, write_yaml, capsys):
    spec = make_spec(
        demo_dir,
        tmp_path,
        tracking_uri,
        discrete="bestrq",
        discrete_params={"codebook_size": 64},
        name="cli-summary",
        trainer={"max_steps": 3},
    ).model_dump(mode="json")
    code = main(["train", str(write_yaml(spec, "cli.yaml")), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "finished (experiment 'cli-summary')" in out and "loss/total=" in out
    assert "masked accuracy (mean over codebooks): rvq_pred" in out
    assert f"metrics: {tracking_uri}" in out and "mertlab ui --tracking-uri" in out


@pytest.mark.integration
def test_profile_logs_a_trace_and_top_ops_table(demo_dir, tmp_path, tracking_uri, write_yaml, capsys):
    """`mertlab train --profile 2`: steps 3-4 (after 2 warm-up steps) traced; both files in the run."""
    spec = make_spec(demo_dir, tmp_path, tracking_uri, name="profile-test").model_dump(mode="json")
    code, err = run_cli(capsys, "train", str(write_yaml(spec, "profile.yaml")), "--no-progress", "--profile", "2")
    assert code in (0, None), err
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("profile-test").experiment_id])[0]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "profile")) == [
        "profile/top_ops.txt",
        "profile/trace.json",
    ]
    top = open(client.download_artifacts(run.info.run_id, "profile/top_ops.txt", str(tmp_path))).read()
    assert top.startswith("torch.profiler: 2 training step(s) from step 2") and "Self CPU" in top and "aten::" in top
    assert (
        '"traceEvents"' in open(client.download_artifacts(run.info.run_id, "profile/trace.json", str(tmp_path))).read()
    )


@pytest.mark.integration
def test_profile_of_a_run_shorter_than_asked_logs_what_it_recorded(demo_dir, tmp_path, tracking_uri):
    spec = make_spec(
        demo_dir,
        tmp_path,
        tracking_uri,
        name="profile-short",
        trainer={"max_steps": 3, "val_every_n_steps": 100, "limit_val_batches": 0},
    )
    result = train(spec, progress=False, profile_steps=5)
    client = MlflowClient(tracking_uri)
    top = open(client.download_artifacts(result.run_id, "profile/top_ops.txt", str(tmp_path))).read()
    assert "training ended after 1 of the 5 profiled steps" in top.splitlines()[0]
