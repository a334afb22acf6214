"""`mertlab sweep`: variants as MLflow child runs of one parent, resumable, schedulable, and
validated as a whole before anything runs."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.data.demo import write_demo_dataset
from mertlab.errors import SpecError
from mertlab.experiment import metric_names as M
from mertlab.experiment.run_summary import summarize
from mertlab.experiment.spec import SweepSpec, load_spec
from mertlab.experiment.sweep import (
    OVERRIDE_PARAM_PREFIX,
    PARENT_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
    expand,
    format_value,
    plan_sweep,
    short_keys,
)
from sweep_support import THREE_VARIANTS, tiny_sweep_spec, write_spec

pytestmark = pytest.mark.filterwarnings("ignore")


# --------------------------------------------------------------------------- expansion (no training)
def test_grid_names_are_readable_and_ordered():
    sweep = SweepSpec(grid={"optim.lr": [1e-3, 2e-3], "teachers.rvq.name": ["encodec", "dac"]})
    variants = expand(sweep)
    assert [v.name for v in variants] == [
        "lr=0.001,name=encodec",
        "lr=0.001,name=dac",
        "lr=0.002,name=encodec",
        "lr=0.002,name=dac",
    ]
    assert variants[1].args() == ["optim.lr=0.001", "teachers.rvq.name=dac"]
    assert [v.name for v in expand(sweep)] == [v.name for v in variants]  # deterministic


def test_named_variants_cross_the_grid():
    sweep = SweepSpec(
        variants={
            "post_ln": {"backbone.params.layer_norm_first": False},
            "relax": {"backbone.params.attention_relax": 32.0},
        },
        grid={"backbone.params.preset": ["tiny", "small"]},
    )
    variants = expand(sweep)
    assert [v.name for v in variants] == [
        "post_ln,preset=tiny",
        "post_ln,preset=small",
        "relax,preset=tiny",
        "relax,preset=small",
    ]
    assert variants[2].args() == ["backbone.params.attention_relax=32.0", "backbone.params.preset=tiny"]
    only_named = expand(SweepSpec(variants={"a": {}, "b": {"optim.lr": 0.1}}))
    assert [(v.name, v.args()) for v in only_named] == [("a", []), ("b", ["optim.lr=0.1"])]


def test_short_keys_stay_distinct():
    assert short_keys(["optim.lr", "teachers.rvq.params.bandwidth"]) == {
        "optim.lr": "lr",
        "teachers.rvq.params.bandwidth": "bandwidth",
    }
    assert short_keys(["a.x.lr", "b.x.lr", "c.y"]) == {"a.x.lr": "a.x.lr", "b.x.lr": "b.x.lr", "c.y": "y"}
    assert short_keys(["optim.lr", "head.optim.lr"]) == {"optim.lr": "optim.lr", "head.optim.lr": "head.optim.lr"}


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
    max_leaves=6,
)


@example({"\n": None})  # a key with a line break: an explicit key, double-quoted
@example(["a\u2028b", "\r"])
@settings(max_examples=30, deadline=None)
@given(yaml_values)
def test_override_values_round_trip_through_the_command_line(value):
    text = format_value(value)
    assert "\n" not in text
    assert yaml.safe_load(text) == value


@pytest.mark.parametrize(
    "sweep, message",
    [
        (
            {"grid": {"tracking.experiment": ["a", "b"]}},
            "sweep.grid: Value error, a sweep cannot vary 'tracking.experiment'",
        ),
        ({"variants": {"v": {"name": "other"}}}, "sweep.variants: Value error, a sweep cannot vary 'name'"),
        ({"grid": {"optim.lr": []}}, "sweep.grid: Value error, grid key 'optim.lr' has an empty list of values"),
        ({"grid": {"optim.lr": [0.1, 0.1]}}, "grid key 'optim.lr' lists the same value twice"),
        ({"variants": {"a b": {}}}, "variant name 'a b': use letters, digits"),
        (
            {"grid": {"optim.lr": [0.1]}, "variants": {"v": {"optim.lr": 0.2}}},
            "variant 'v' sets optim.lr, which the grid also varies",
        ),
        ({}, "sweep: Value error, a sweep needs `grid` and/or `variants`"),
        (
            {"variants": {"v": {"optim": {"lr": 0.1}, "optim.lr": 0.2}}},
            "variant 'v' sets both optim and optim.lr, one inside the other",
        ),
        (
            {"grid": {"optim.lr": [0.1, 0.2]}, "variants": {"v": {"optim": {"lr": 0.3}}}},
            "variant 'v' sets optim, which the grid also varies",
        ),
    ],
)
def test_bad_sweep_blocks_are_spec_errors(tmp_path, sweep, message):
    spec = tiny_sweep_spec("bad", tmp_path, tmp_path, None, sweep)
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path / "s.yaml", spec))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "variants",
    [{"a": {}, "b": {}}, {"a": {"optim.lr": 1e-3}, "b": {"optim.lr": 0.001}}, {"a": {}, "b": {"optim.lr": 1e-3}}],
)
def test_two_variants_training_the_same_spec_are_one_line_naming_both(tmp_path, variants):
    """``optim.lr`` is 1e-3 in the base spec: each pair trains one spec twice under two names."""
    spec = tiny_sweep_spec("same", tmp_path, tmp_path, None, {"variants": variants})
    assert spec["optim"]["lr"] == 1e-3
    with pytest.raises(SpecError) as err:
        plan_sweep(write_spec(tmp_path / "s.yaml", spec))
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert message.endswith(
        "variant 'b': trains exactly the spec of variant 'a' (their overrides give the same values); "
        "drop one or make them differ"
    ), message


def test_summary_reduces_histories():
    class P:
        def __init__(self, step, value, ts=0):
            self.step, self.value, self.timestamp = step, value, ts

    histories = {
        M.LOSS_TOTAL: [P(2, 1.5), P(0, 3.0), P(1, float("nan")), P(2, 1.2, ts=5)],  # resumed: step 2 twice
        M.GRAD_NORM_TOTAL: [P(0, 2.0), P(1, float("inf")), P(2, 7.0)],
        M.LOSS_SPIKES: [P(0, 0.0), P(5, 2.0)],
        "attn/max_logit/layer0": [P(0, 3.0), P(1, 4.0)],
        "attn/max_logit/layer1": [P(0, 9.0)],
        M.val(M.LOSS_TOTAL): [P(1, 2.0), P(3, 2.5)],
    }
    assert summarize(histories) == {
        M.SUMMARY_FINAL_LOSS: 1.2,
        M.SUMMARY_MAX_GRAD_NORM: 7.0,
        M.SUMMARY_LOSS_SPIKES: 2.0,
        M.SUMMARY_MAX_ATTN_LOGIT: 9.0,
        M.SUMMARY_BEST_VAL_LOSS: 2.0,
    }  # never logged -> left out (no nonfinite/skipped counters here)


# --------------------------------------------------------------------------- a real tiny sweep
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep")
    write_demo_dataset(path / "demo", num_clips=6, seconds=2.0, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)  # MLflow's default artifact folder (./mlruns) lands here
        yield path


@pytest.fixture(scope="module")
def tracking_uri(workdir):
    return f"sqlite:///{workdir / 'mlflow.db'}"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def experiment_runs(client, name):
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture(scope="module")
def swept(workdir, tracking_uri):
    """The three-variant sweep, run once through the CLI."""
    spec_path = write_spec(
        workdir / "sweep.yaml", tiny_sweep_spec("tiny-sweep", workdir / "demo", workdir, tracking_uri, THREE_VARIANTS)
    )
    code = main(["sweep", str(spec_path), "--no-progress"])
    assert code == 0
    client = MlflowClient(tracking_uri)
    runs = experiment_runs(client, "tiny-sweep")
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1
    return spec_path, parents[0], {r.data.tags[VARIANT_TAG]: r for r in runs if PARENT_TAG in r.data.tags}


@pytest.mark.integration
def test_sweep_makes_one_parent_with_a_child_per_variant(swept, tracking_uri, tmp_path):
    _, parent, children = swept
    client = MlflowClient(tracking_uri)
    assert parent.data.tags[SWEEP_TAG] == "tiny-sweep" and client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert sorted(children) == ["base", "cqt_only", "lr_high"]
    for name, child in children.items():
        assert child.data.tags[PARENT_TAG] == parent.info.run_id and child.info.run_name == name
        assert child.info.status == "FINISHED" and child.data.tags[SWEEP_TAG] == "tiny-sweep"
    overrides = {
        n: {k: v for k, v in c.data.params.items() if k.startswith(OVERRIDE_PARAM_PREFIX)} for n, c in children.items()
    }
    assert overrides == {
        "base": {},
        "cqt_only": {"override.teachers.rvq": "null", "override.objectives.rvq_pred": "null"},
        "lr_high": {"override.optim.lr": "0.01"},
    }
    # the overrides were really applied to what each child trained
    assert children["lr_high"].data.params["optim.lr"] == "0.01" and children["base"].data.params["optim.lr"] == "0.001"
    assert (
        "teachers.rvq.name" not in children["cqt_only"].data.params
        and "loss/rvq_pred" not in children["cqt_only"].data.metrics
    )
    assert "loss/rvq_pred" in children["base"].data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "sweep.yaml", "compare"} <= artifacts
    listing = yaml.safe_load(
        Path(client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path))).read_text()
    )
    assert [v["name"] for v in listing["variants"]] == ["base", "cqt_only", "lr_high"]


@pytest.mark.integration
def test_each_run_ends_with_a_summary_read_back_from_its_history(swept, tracking_uri):
    client = MlflowClient(tracking_uri)
    for child in swept[2].values():
        run_id = child.info.run_id
        metrics = client.get_run(run_id).data.metrics

        def history(key, run_id=run_id):
            return [m.value for m in client.get_metric_history(run_id, key)]

        assert metrics[M.SUMMARY_MAX_GRAD_NORM] == max(history(M.GRAD_NORM_TOTAL))
        assert metrics[M.SUMMARY_FINAL_LOSS] == metrics[M.LOSS_TOTAL]
        assert metrics[M.SUMMARY_BEST_VAL_LOSS] == min(history(M.val(M.LOSS_TOTAL)))
        attn = [v for k in metrics if k.startswith("attn/max_logit/") for v in history(k)]
        assert metrics[M.SUMMARY_MAX_ATTN_LOGIT] == max(attn) and math.isfinite(max(attn))
        assert metrics[M.SUMMARY_NONFINITE_STEPS] == metrics[M.SUMMARY_SKIPPED_STEPS] == 0
        assert M.SUMMARY_LOSS_SPIKES in metrics


@pytest.mark.integration
def test_rerun_skips_finished_children_and_resumes_unfinished_ones(swept, tracking_uri, capsys):
    spec_path, parent, children = swept
    client = MlflowClient(tracking_uri)
    resumable = children["lr_high"].info.run_id  # failed with a checkpoint: continues in the same run
    client.set_terminated(resumable, "FAILED")
    lost = children["cqt_only"].info.run_id  # failed before writing a checkpoint: starts over
    client.set_terminated(lost, "FAILED")
    ckpt_dir = Path(load_spec(spec_path).trainer.output_dir) / "tiny-sweep" / lost / "checkpoints"
    for ckpt in ckpt_dir.glob("*.ckpt"):
        ckpt.unlink()
    before = {r.info.run_id for r in experiment_runs(client, "tiny-sweep")}

    code, out, _ = run_cli(capsys, "sweep", spec_path, "--no-progress", "--no-compare")

    assert code == 0, out
    assert out.count("skipped: already finished") == 1 and "resumed (run " + resumable in out
    after = {r.data.tags.get(VARIANT_TAG): r for r in experiment_runs(client, "tiny-sweep")}
    assert after[None].info.run_id == parent.info.run_id  # the parent is reused
    assert after["base"].info.run_id == children["base"].info.run_id
    assert after["lr_high"].info.run_id == resumable and after["lr_high"].info.status == "FINISHED"
    assert after["cqt_only"].info.run_id not in before and after["cqt_only"].info.status == "FINISHED"
    assert client.get_run(lost).info.lifecycle_stage == "deleted"
    assert len(after) == 4


@pytest.mark.integration
def test_dry_run_prints_commands_a_scheduler_can_run(workdir, tracking_uri, capsys, monkeypatch):
    # no tracking_uri in the spec: the store comes from the environment, and the commands pin it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    spec_path = write_spec(
        workdir / "dry.yaml", tiny_sweep_spec("tiny-dry", workdir / "demo", workdir, None, THREE_VARIANTS)
    )
    code, out, _ = run_cli(capsys, "sweep", spec_path, "--dry-run", "-o", "trainer.max_steps=3")
    assert code == 0
    commands = [line for line in out.splitlines() if "mertlab train" in line]
    assert len(commands) == 3
    client = MlflowClient(tracking_uri)
    (parent,) = experiment_runs(client, "tiny-dry")  # the parent exists, no child ran
    assert parent.info.status == "SCHEDULED"
    first = shlex.split(commands[0])
    assert first[0] == f"MLFLOW_TRACKING_URI={tracking_uri}" and first[1:4] == ["mertlab", "train", str(spec_path)]
    assert (
        first[first.index("--parent-run-id") + 1] == parent.info.run_id
        and first[first.index("--variant") + 1] == "base"
    )
    assert "trainer.max_steps=3" in first  # the sweep command's own overrides reach every child
    assert "optim.lr=0.01" in commands[2]

    # run one printed command as a scheduler would: a fresh shell, the venv's entry point on PATH
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        ["bash", "-c", commands[0]], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "variant 'base': trained" in done.stdout
    children = [r for r in experiment_runs(client, "tiny-dry") if PARENT_TAG in r.data.tags]
    assert len(children) == 1
    child = children[0]
    assert child.data.tags[PARENT_TAG] == parent.info.run_id and child.data.tags[VARIANT_TAG] == "base"
    assert child.info.status == "FINISHED" and child.data.params["override.trainer.max_steps"] == "3"
    assert child.data.params["trainer.max_steps"] == "3"

    # the same command again (a requeued job) skips; the next dry run lists only what is left
    code, out, _ = run_cli(capsys, *first[2:])
    assert code == 0 and "variant 'base': skipped (already finished)" in out
    code, out, _ = run_cli(capsys, "sweep", spec_path, "--dry-run", "-o", "trainer.max_steps=3")
    assert f"# base: finished (run {child.info.run_id})" in out
    assert len([line for line in out.splitlines() if "mertlab train" in line]) == 2


@pytest.mark.integration
def test_dry_run_slurm_launcher_writes_one_array_job_of_the_children(workdir, tracking_uri, capsys):
    spec_path = write_spec(
        workdir / "slurm.yaml", tiny_sweep_spec("tiny-slurm", workdir / "demo", workdir, tracking_uri, THREE_VARIANTS)
    )
    job = workdir / "jobs" / "tiny.sbatch"
    code, out, _ = run_cli(
        capsys,
        "sweep",
        spec_path,
        "--dry-run",
        "--launcher",
        "slurm",
        "--sbatch",
        str(job),
        "-o",
        "trainer.devices=2",
        "-o",
        "trainer.accelerator=gpu",
    )
    assert code == 0 and f"written to {job}" in out
    printed = [line for line in out.splitlines() if line.startswith("mertlab train")]
    script = job.read_text()
    assert (
        "#SBATCH --array=0-2" in script
        and "#SBATCH --ntasks-per-node=2" in script
        and "#SBATCH --gpus-per-node=2" in script
    )
    arms = [line.strip() for line in script.splitlines() if line.strip()[:2] in ("0)", "1)", "2)")]
    assert len(arms) == 3
    for arm, command in zip(
        arms, printed, strict=False
    ):  # each task runs exactly its child's printed command under srun
        assert arm.split(" ;;")[0].split(") srun ", 1)[1] == command
    assert subprocess.run(["bash", "-n", str(job)]).returncode == 0
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "9", "SLURM_SUBMIT_DIR": str(workdir)}
    done = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no sweep child for array task 9" in done.stderr
    code, _, err = run_cli(capsys, "sweep", spec_path, "--launcher", "slurm")
    assert code == 2 and "add --dry-run" in err


@pytest.mark.integration
def test_invalid_variant_fails_before_any_child_starts(workdir, tracking_uri, capsys):
    sweep = {
        "variants": {
            "fine": {"optim.lr": 0.002},
            "bad_lr": {"optim.lr": -1},
            "bad_cqt": {"teachers.cqt.params.n_bins": 0},
        }
    }
    spec_path = write_spec(
        workdir / "invalid.yaml", tiny_sweep_spec("tiny-invalid", workdir / "demo", workdir, tracking_uri, sweep)
    )
    for extra in ((), ("--dry-run",)):
        code, out, err = run_cli(capsys, "sweep", spec_path, *extra)
        assert code == 1
        assert f"error: {spec_path}: variant 'bad_lr': optim.lr: Input should be greater than 0" in err
        assert (
            f"error: {spec_path}: variant 'bad_cqt': teachers.cqt.params.n_bins: Input should be greater than 0" in err
        )
        assert "fine" not in err
    assert experiment_runs(MlflowClient(tracking_uri), "tiny-invalid") == []  # not even a parent
    code, _, err = run_cli(capsys, "validate", spec_path)
    assert code == 1 and "variant 'bad_lr': optim.lr" in err


@pytest.mark.integration
def test_train_child_options_are_checked(swept, capsys):
    spec_path = swept[0]
    code, _, err = run_cli(capsys, "train", spec_path, "--variant", "x")
    assert code == 2 and "--parent-run-id and --variant go together" in err
    code, _, err = run_cli(capsys, "train", spec_path, "--parent-run-id", "0" * 32, "--variant", "x")
    assert code == 1 and f"--parent-run-id: no MLflow run {'0' * 32}" in err
    code, _, err = run_cli(
        capsys, "sweep", write_spec(Path("plain.yaml"), {**yaml.safe_load(spec_path.read_text()), "sweep": None})
    )
    assert code == 1 and "sweep: this spec has no `sweep:` block" in err


@pytest.mark.integration
def test_a_failing_child_is_recorded_and_the_others_still_run(workdir, tracking_uri, capsys):
    sweep = {"variants": {"too_long": {"data.crop_seconds": 30}, "fine": {}}}  # the demo clips last 2 s
    spec_path = write_spec(
        workdir / "failing.yaml", tiny_sweep_spec("tiny-failing", workdir / "demo", workdir, tracking_uri, sweep)
    )
    code, out, err = run_cli(capsys, "sweep", spec_path, "--no-progress", "--no-compare")
    assert code == 1 and "error: 1 of 2 variants failed: too_long" in err
    assert "failed: data.crop_seconds: 30 s is longer than every file" in out
    runs = {r.data.tags.get(VARIANT_TAG): r for r in experiment_runs(MlflowClient(tracking_uri), "tiny-failing")}
    assert runs["too_long"].info.status == "FAILED" and runs["fine"].info.status == "FINISHED"
    assert runs[None].info.status == "FAILED"  # the parent
