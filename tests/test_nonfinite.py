"""Non-finite steps and loss spikes: skipped, counted, logged as such, with or without the
stability callback; a run of bad steps stops with a usable checkpoint; spike actions."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from mertlab.errors import MertlabError
from mertlab.experiment import metric_names as M
from mertlab.train.module import PretrainModule
from mertlab.train.run import train
from mertlab.train.schedule import lr_factor
from test_train import make_spec

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]

BESTRQ = {"codebook_size": 16, "n_codebooks": 1}
NO_CALLBACK = {"callbacks": {}}


def spec_for(demo_dir, tmp_path, tracking_uri, **overrides):
    overrides.setdefault("trainer", {})
    overrides["trainer"] = {"log_every_n_steps": 1, **overrides["trainer"]}
    spec = make_spec(demo_dir, tmp_path, tracking_uri, "transformer", "bestrq", BESTRQ, **overrides)
    if "callbacks" in overrides and not overrides["callbacks"]:
        spec.callbacks = {}
    return spec


def history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def nonfinite(value):
    return not math.isfinite(value) or abs(value) >= 1e300  # MLflow stores inf as the largest float


@pytest.mark.parametrize("callbacks", [None, NO_CALLBACK], ids=["stability-callback", "no-callback"])
def test_every_step_nonfinite_is_skipped_and_never_logged_as_a_finite_value(
    demo_dir, tmp_path, tracking_uri, callbacks
):
    # cross-entropy over 16 codes is > 2 at init: x 1e308 overflows to inf on every step
    objectives = {"rvq_pred": {"name": "masked_prediction", "teacher": "rvq", "weight": 1e308}}
    spec = spec_for(
        demo_dir,
        tmp_path,
        tracking_uri,
        objectives=objectives,
        trainer={"max_steps": 4, "max_consecutive_nonfinite": 0},
        **(callbacks or {}),
    )
    result = train(spec, progress=False)
    client = MlflowClient(tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    losses, norms = history(client, result.run_id, M.LOSS_TOTAL), history(client, result.run_id, M.GRAD_NORM_TOTAL)
    assert sorted(losses) == sorted(norms) == [0, 1, 2, 3]
    assert all(nonfinite(v) for v in losses.values()) and all(math.isnan(v) for v in norms.values())
    assert history(client, result.run_id, M.NONFINITE_STEPS) == {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    assert history(client, result.run_id, M.SKIPPED_STEPS)[3] == 4.0
    assert nonfinite(result.metrics[M.SUMMARY_FINAL_LOSS]) and result.metrics[M.SUMMARY_NONFINITE_STEPS] == 4.0
    # skipped steps: weights and optimizer state (Adam moments) untouched; the schedule advances
    ckpt = torch.load(result.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["optimizer_states"][0]["state"] == {}
    L.seed_everything(spec.seed, verbose=False)
    initial = PretrainModule(spec).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in ckpt["state_dict"].items())
    lrs = history(client, result.run_id, M.LR)
    assert [lrs[s] for s in range(4)] == pytest.approx([spec.optim.lr * lr_factor(s, spec.optim, 4) for s in range(4)])


@pytest.mark.parametrize("callbacks", [None, NO_CALLBACK], ids=["stability-callback", "no-callback"])
def test_diverging_run_logs_real_values_then_stops_with_a_usable_checkpoint(
    demo_dir, tmp_path, tracking_uri, callbacks
):
    # a huge learning rate without warmup diverges after the first steps
    spec = spec_for(
        demo_dir,
        tmp_path,
        tracking_uri,
        optim={"lr": 1e6, "warmup_steps": 0},
        trainer={"max_steps": 40, "max_consecutive_nonfinite": 3, "val_every_n_steps": 100},
        **(callbacks or {}),
    )
    with pytest.raises(
        MertlabError,
        match=r"training stopped at step \d+: 3 consecutive non-finite steps "
        r"\(trainer.max_consecutive_nonfinite: 3\).*checkpoint: .*last.ckpt",
    ):
        train(spec, progress=False)
    client = MlflowClient(tracking_uri)
    run = client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )[0]
    assert run.info.status == "FAILED" and "3 consecutive non-finite steps" in run.data.tags["mertlab.stopped"]
    losses, norms = history(client, run.info.run_id, M.LOSS_TOTAL), history(client, run.info.run_id, M.GRAD_NORM_TOTAL)
    counts = history(client, run.info.run_id, M.NONFINITE_STEPS)
    assert any(math.isfinite(v) for v in losses.values()) and counts[max(counts)] >= 3
    updates = history(client, run.info.run_id, M.NONFINITE_UPDATES)
    previous = previous_updates = 0.0
    for step in sorted(counts):
        # a step counted non-finite shows a non-finite loss or gradient norm (never stale values),
        # or an undone update that left a parameter non-finite
        undone = updates[step] > previous_updates
        if counts[step] > previous:
            assert nonfinite(losses[step]) or nonfinite(norms[step]) or undone, step
        else:
            assert math.isfinite(losses[step]) and math.isfinite(norms[step]) and not undone, step
        previous, previous_updates = counts[step], updates[step]
    ckpt_path = tmp_path / "runs" / spec.name / run.info.run_id / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["global_step"] == max(counts) + 1


def test_spike_action_skip_drops_the_update_and_is_counted_and_tagged(demo_dir, tmp_path, tracking_uri):
    # a first Adam step of 0.3 per weight wrecks the tiny model: the next losses spike far above the first
    callbacks = {
        "stability": {"name": "stability", "params": {"spike_z": 2.0, "warmup_steps": 1, "spike_action": "skip"}}
    }
    spec = spec_for(
        demo_dir,
        tmp_path,
        tracking_uri,
        callbacks=callbacks,
        trainer={"max_steps": 8},
        optim={"lr": 0.3, "warmup_steps": 0, "schedule": "constant"},
    )
    result = train(spec, progress=False)
    client = MlflowClient(tracking_uri)
    skips = history(client, result.run_id, M.SPIKE_SKIPS)
    assert skips and max(skips.values()) == len(skips)
    skipped = history(client, result.run_id, M.SKIPPED_STEPS)
    assert skipped[7] == len(skips) and history(client, result.run_id, M.NONFINITE_STEPS)[7] == 0
    assert "update skipped" in client.get_run(result.run_id).data.tags["mertlab.stability.last_action"]


def test_spike_action_rollback_reloads_the_checkpoint_and_scales_the_learning_rate(demo_dir, tmp_path, tracking_uri):
    callbacks = {
        "stability": {
            "name": "stability",
            "params": {"spike_z": 2.0, "warmup_steps": 1, "spike_action": "rollback", "rollback_lr_scale": 0.5},
        }
    }
    spec = spec_for(
        demo_dir,
        tmp_path,
        tracking_uri,
        callbacks=callbacks,
        optim={"lr": 0.3, "schedule": "constant", "warmup_steps": 0},
        trainer={"max_steps": 10, "val_every_n_steps": 3},
    )
    result = train(spec, progress=False)
    client = MlflowClient(tracking_uri)
    rollbacks = history(client, result.run_id, M.ROLLBACKS)
    assert rollbacks and max(rollbacks.values()) == len(rollbacks)
    first = min(rollbacks)
    assert first >= 3  # before the first checkpoint (step 3) there is nothing to roll back to
    lrs = history(client, result.run_id, M.LR)
    assert lrs[first] == pytest.approx(spec.optim.lr)  # logged before the spike was seen
    before_last = len([s for s in rollbacks if s < 9])
    assert lrs[9] == pytest.approx(spec.optim.lr * 0.5**before_last)  # the scale persists and compounds
    tag = client.get_run(result.run_id).data.tags["mertlab.stability.last_action"]
    assert "rolled back to last.ckpt" in tag or "update skipped" in tag
