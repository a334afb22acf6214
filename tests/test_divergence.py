"""Divergence handled end to end: an optimizer update that leaves a parameter non-finite is
undone (counted as a skipped non-finite step), and probing refuses non-finite features with one
line naming the checkpoint and layer; the train command's ``probe:`` section reports it per task."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.experiment import metric_names as M
from mertlab.train.module import PretrainModule
from mertlab.train.run import train
from mertlab.train.update_guard import UpdateGuard
from test_nonfinite import history, spec_for

pytestmark = pytest.mark.filterwarnings("ignore")

REPO_EXPERIMENTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments"


def adamw_after_steps(steps: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def state_copy(model, optimizer):
    params = [p.detach().clone() for p in model.parameters()]
    state = {i: {k: v.clone() for k, v in optimizer.state[p].items()} for i, p in enumerate(model.parameters())}
    return params, state


@pytest.mark.parametrize("steps_before", [0, 2], ids=["first-step", "later-step"])
def test_the_guard_restores_parameters_and_optimizer_state_exactly(steps_before):
    model, optimizer = adamw_after_steps(steps_before)
    before = state_copy(model, optimizer)
    guard = UpdateGuard()
    model(torch.randn(5, 4)).square().sum().backward()
    guard.snapshot(optimizer)
    optimizer.step()
    with torch.no_grad():
        model[1].weight[0, 1] = math.inf  # as an overflowing update would leave it
    assert guard.undo_if_nonfinite(optimizer) == 2  # model.1.weight, in the optimizer's order
    after = state_copy(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True))
    assert all(not state for state in before[1].values()) == (steps_before == 0)  # no Adam state yet
    assert after[1].keys() == before[1].keys()
    for i in before[1]:
        assert after[1][i].keys() == before[1][i].keys()
        assert all(torch.equal(before[1][i][k], after[1][i][k]) for k in before[1][i])
    # a finite step is kept, and without a snapshot nothing is undone
    guard.snapshot(optimizer)
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    assert guard.undo_if_nonfinite(optimizer) is None and not guard.armed
    assert guard.undo_if_nonfinite(optimizer) is None
    assert not all(torch.equal(a, b) for a, b in zip(before[0], state_copy(model, optimizer)[0], strict=True))


@pytest.mark.integration
def test_a_nonfinite_update_in_training_is_undone_and_counted(demo_dir, tmp_path, tracking_uri, monkeypatch, caplog):
    """Step 2's update is made to leave an inf weight (after a finite loss and gradient): the
    update is undone, the step counted as skipped and non-finite, and training goes on."""
    configure = PretrainModule.configure_optimizers
    seen = {}

    def corrupting(self):
        out = configure(self)
        optimizer = out["optimizer"]
        target = self.backbone.feature_projection.projection.weight

        def after_step(opt, args, kwargs):
            seen["steps"] = seen.get("steps", 0) + 1
            if seen["steps"] == 3:
                seen["before"] = self.update_guard._saved[0].buffer.clone()
                with torch.no_grad():
                    target.view(-1)[0] = math.inf

        optimizer.register_step_post_hook(after_step)
        return out

    monkeypatch.setattr(PretrainModule, "configure_optimizers", corrupting)
    spec = spec_for(demo_dir, tmp_path, tracking_uri, trainer={"max_steps": 5, "val_every_n_steps": 100}, callbacks={})
    with caplog.at_level("WARNING", logger="mertlab"):
        result = train(spec, progress=False)
    client = MlflowClient(tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert history(client, result.run_id, M.NONFINITE_UPDATES) == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    assert history(client, result.run_id, M.NONFINITE_STEPS)[4] == 1.0
    assert history(client, result.run_id, M.SKIPPED_STEPS)[4] == 1.0
    losses = history(client, result.run_id, M.LOSS_TOTAL)
    assert all(math.isfinite(v) for v in losses.values())  # the loss and gradients were finite
    warned = [r.getMessage() for r in caplog.records if "optimizer update made" in r.getMessage()]
    assert len(warned) == 1 and "parameter backbone." in warned[0] and "undone" in warned[0]
    ckpt = torch.load(result.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["mertlab_stability"]["nonfinite_updates"] == 1


def small_demo_tasks(folder):
    """The four demo tasks cut to their first three classes (tempo: six clips), three clips
    each: the probe only has to run, not to score."""
    import csv

    from mertlab.data.demo_tasks import DEMO_TASKS, write_demo_task

    paths = []
    for task in DEMO_TASKS.values():
        path = write_demo_task(
            folder, dataclasses.replace(task, per_class=3 if task.num_classes else 6), progress=False
        )
        with path.open() as f:
            rows = list(csv.DictReader(f))
        keep = list(dict.fromkeys(r["label"] for r in rows))[:3] if task.num_classes else [r["label"] for r in rows]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["label"] in keep)
        paths.append(str(path))
    return paths


@pytest.mark.integration
def test_quickstart_at_lr_1e6_ends_with_one_probe_line_per_task_and_finite_weights(
    demo_dir, tmp_path, tracking_uri, capsys
):
    data = tmp_path / "demo"
    shutil.copytree(demo_dir, data)
    tasks = small_demo_tasks(tmp_path / "tasks")
    overrides = {
        "optim.lr": "1e6",
        "optim.warmup_steps": "0",
        "data.path": str(data),
        "data.generate_demo": "false",
        "data.target_cache": str(tmp_path / "targets"),
        "data.crop_seconds": "1.0",
        "data.batch_size": "2",
        "trainer.max_steps": "4",
        "trainer.log_every_n_steps": "1",
        "trainer.output_dir": str(tmp_path / "runs"),
        "tracking.tracking_uri": tracking_uri,
        "probe.tasks": "[" + ", ".join(tasks) + "]",
        "probe.random_init": "false",
        "probe.baselines": "[]",
        "probe.max_epochs": "2",
        "probe.cache_dir": "null",
    }
    argv = ["train", str(REPO_EXPERIMENTS / "quickstart.yaml"), "--no-progress"]
    argv += [x for key, value in overrides.items() for x in ("-o", f"{key}={value}")]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    names = ("pitch", "timbre", "key", "tempo")
    verdicts = [line for line in out if line.startswith(tuple(f"{name}: " for name in names))]
    assert len(verdicts) == 4, out  # one line per task, in the spec's order
    for name, line in zip(names, verdicts, strict=True):
        assert line.startswith(f"{name}: not probed: ") and "last.ckpt: layer " in line, line
        assert "non-finite features" in line
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.metrics[M.NONFINITE_STEPS] >= 1
    assert "non-finite features" in run.data.tags["probe/tempo/refused"]
    ckpt_path = tmp_path / "runs" / "quickstart" / run.info.run_id / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # `mertlab probe` on it: the same refusal, one line
    assert main(["probe", str(ckpt_path), tasks[-1], "--no-tracking", "--no-cache", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {ckpt_path}: layer ") and "non-finite features" in err[0]
