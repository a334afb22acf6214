"""Recovery and resharding across ranks: a spike rollback is executed by both ranks of a DDP run
or by neither (identical weights after every step), and the run's checkpoint resumes on 1 and
on 3 ranks with the same global batch and the same next batch of files and crops."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from launch_support import base_env, launch, ok, probe_plugin_site, probe_records, tiny_spec
from mertlab.data.datamodule import AudioDataModule
from mertlab.data.demo import write_demo_dataset
from mertlab.data.sampler import ResumableBatchSampler
from mertlab.experiment import metric_names as M
from mertlab.experiment.spec import load_spec
from mertlab.train.run import train
from sampler_support import stream

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]
GLOBAL_BATCH = 6
STEPS = 6


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tracking_uri):
    """Two ranks started together train 6 steps of 2 x 3 clips (checkpoints every 2 steps) with
    a forced loss spike at step 3 (rolled back to the step-2 checkpoint) and one at step 5 where
    rank 1 cannot read the checkpoint (every rank only skips the update)."""
    root = tmp_path_factory.mktemp("recovery")
    data = root / "music"
    write_demo_dataset(data, num_clips=14, seconds=1.2, progress=False)
    raw = tiny_spec(
        "recovery",
        data,
        root,
        tracking_uri,
        max_steps=STEPS,
        val_every_n_steps=2,  # no validation: a checkpoint every 2 steps
        limit_val_batches=0,
        devices=2,
        strategy="ddp",
    )
    raw["seed"] = 5
    raw["data"].update(batch_size=GLOBAL_BATCH // 2, val_fraction=0.0)
    raw["callbacks"] = {
        "faults": {"name": "test_faults"},
        "stability": {
            "name": "stability",
            "params": {"every_n_steps": 100, "warmup_steps": 1, "spike_z": 2.0, "spike_action": "rollback"},
        },
        "probe": {"name": "rank_probe"},
    }
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    site = probe_plugin_site(root / "site")
    probes = root / "probes-2"
    env = base_env(site, PROBE_DIR=str(probes), SPIKE_STEPS="3,5", BREAK_LOAD_STEPS="5")
    ok(launch(["train", str(spec_path), "--no-progress"], 2, root, env))
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
    last = root / "runs" / "recovery" / run.info.run_id / "checkpoints" / "last.ckpt"
    kept = shutil.copy(last, root / "step6.ckpt")  # the resumed runs below write last.ckpt again
    return {"root": root, "spec": spec_path, "site": site, "probes": probes, "run": run, "checkpoint": kept}


def test_a_rollback_on_two_ranks_happens_on_both_or_neither_and_leaves_identical_weights(two_rank_run, tracking_uri):
    probes = two_rank_run["probes"]
    steps = [{r["step"]: r for r in probe_records(probes, rank) if r["event"] == "step"} for rank in (0, 1)]
    assert sorted(steps[0]) == list(range(1, STEPS + 1))
    for step in steps[0]:  # after every step both ranks hold the same weights and optimizer state
        assert steps[0][step] == steps[1][step], step
    weights = {step: record["weights"] for step, record in steps[0].items()}
    # step 4 (spike): both ranks rolled back to the step-2 checkpoint, weights and optimizer state
    assert weights[4] == weights[2] != weights[3]
    assert steps[0][4]["optimizer"] == steps[0][2]["optimizer"]
    # step 6 (spike, rank 1 cannot read the step-4 checkpoint): neither rolled back, both skipped
    assert weights[6] == weights[5] != weights[4]
    client = MlflowClient(tracking_uri)
    run_id = two_rank_run["run"].info.run_id
    assert {m.step: m.value for m in client.get_metric_history(run_id, M.ROLLBACKS)} == {3: 1.0}
    action = client.get_run(run_id).data.tags["mertlab.stability.last_action"]
    assert "step 5: loss spike" in action and "cannot roll back to last.ckpt on rank 1 (OSError)" in action


def first_batch(records: list[dict]) -> tuple[int, list[str], list[float]]:
    (batch,) = [r for r in records if r["event"] == "batch"]
    return batch["step"], batch["files"], batch["starts"]


def test_a_two_rank_checkpoint_resumes_on_one_and_on_three_ranks_with_the_same_next_batch(
    two_rank_run, probes_registry, monkeypatch
):
    root, checkpoint = two_rank_run["root"], str(two_rank_run["checkpoint"])
    assert torch.load(checkpoint, weights_only=False)["global_step"] == STEPS
    # What comes next in the data stream: the 7th global batch of one process with batch 6.
    spec = load_spec(two_rank_run["spec"], registry=probes_registry)
    datamodule = AudioDataModule(spec.data, 24000, spec.seed)
    datamodule.setup()
    files = [f.path.name for f in datamodule.train_files]
    sampler = ResumableBatchSampler(len(files), GLOBAL_BATCH, len(files) > GLOBAL_BATCH, spec.seed)
    expected = [files[key.index] for key in stream(sampler, STEPS + 1)[STEPS]]

    one = root / "probes-1"
    monkeypatch.setenv("PROBE_DIR", str(one))
    single = load_spec(
        two_rank_run["spec"],
        [f"data.batch_size={GLOBAL_BATCH}", "trainer.devices=1", "trainer.strategy=auto", "trainer.max_steps=7"],
        registry=probes_registry,
    )
    result = train(single, resume=checkpoint, registry=probes_registry, progress=False)
    assert result.run_id == two_rank_run["run"].info.run_id
    step, one_files, one_starts = first_batch(probe_records(one, 0))
    assert step == STEPS and one_files == expected

    three = root / "probes-3"
    args = ["train", str(two_rank_run["spec"]), "--resume", checkpoint, "--no-progress"]
    args += ["-o", f"data.batch_size={GLOBAL_BATCH // 3}", "-o", "trainer.devices=3", "-o", "trainer.max_steps=7"]
    ok(launch(args, 3, root, base_env(two_rank_run["site"], PROBE_DIR=str(three))))
    ranks = [first_batch(probe_records(three, rank)) for rank in range(3)]
    assert {step for step, _, _ in ranks} == {STEPS}
    # clip i of rank r is clip i x 3 + r of the global batch
    three_files = [ranks[r][1][i] for i in range(GLOBAL_BATCH // 3) for r in range(3)]
    three_starts = [ranks[r][2][i] for i in range(GLOBAL_BATCH // 3) for r in range(3)]
    assert three_files == one_files == expected
    assert three_starts == one_starts  # the same crops too
    starts = [[r for r in probe_records(three, rank) if r["event"] == "start"] for rank in range(3)]
    assert all(s == [{"event": "start", "run_id": result.run_id, "step": STEPS}] for s in starts)
