"""One authority at start-up: how a process finds its rank and launcher, rank 0 deciding for
every rank, ranks proving they start alike, and ``--resume auto``. The end-to-end test starts
two ``mertlab train`` processes at once with RANK/WORLD_SIZE/MASTER_ADDR set, as torchrun and
srun do."""

from __future__ import annotations

import json
import os
import shlex

import pytest
import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.tracking import MlflowClient

from launch_support import base_env, launch, ok, probe_plugin_site, probe_records, tiny_spec
from mertlab.cli import main
from mertlab.errors import MertlabError
from mertlab.experiment import metric_names as M
from mertlab.experiment.spec import TrainerSpec
from mertlab.experiment.sweep import PARENT_TAG
from mertlab.experiment.tracking import LOCK_TAG
from mertlab.toolkit.run_lock import lock_held
from mertlab.train.agreement import state_digest
from mertlab.train.startup import (
    STARTUP_ENV,
    Launch,
    StartState,
    Startup,
    check_agreement,
    detect_launch,
    handed_over_decisions,
)

pytestmark = pytest.mark.filterwarnings("ignore")
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_launch_env(monkeypatch):
    """No launcher variables of the test process leak in, and Lightning's global rank is restored."""
    for name in (*LAUNCH_VARS, "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", STARTUP_ENV):
        monkeypatch.delenv(name, raising=False)
    ranks = rank_zero_only.rank, fabric_rank_zero_only.rank
    yield monkeypatch
    rank_zero_only.rank, fabric_rank_zero_only.rank = ranks


# --------------------------------------------------------------------------- launch detection
def trainer(devices: int = 2, nodes: int = 1) -> TrainerSpec:
    return TrainerSpec(devices=devices, num_nodes=nodes, accelerator="cpu")


def test_one_process_needs_no_launcher(clean_launch_env):
    assert detect_launch(trainer(devices=1)) == Launch(0, 1, False)


def test_processes_started_together_are_external_with_the_launchers_rank(clean_launch_env):
    env = clean_launch_env
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29999"}.items():
        env.setenv(name, value)
    launch = detect_launch(trainer())
    assert (launch.rank, launch.world_size, launch.external, launch.lead) == (1, 2, True, False)


def test_lightnings_own_launcher_is_not_external_and_several_nodes_need_one(clean_launch_env):
    launch = detect_launch(trainer())  # `mertlab train` once: Lightning starts rank 1 in fit
    assert (launch.rank, launch.world_size, launch.external) == (0, 2, False)
    with pytest.raises(MertlabError, match="trainer.num_nodes: 2 nodes need a launcher that starts every process"):
        detect_launch(trainer(nodes=2))


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3", "MASTER_PORT": "1"}, "2 processes, but the launcher"),
        ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_PORT": "1"}, "RANK=3, but NODE_RANK"),
        ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "MASTER_PORT: set it"),
    ],
)
def test_a_launch_that_disagrees_with_the_spec_is_one_clear_error(clean_launch_env, env, message):
    for name, value in env.items():
        clean_launch_env.setenv(name, value)
    nodes = 2 if env.get("WORLD_SIZE") == "4" else 1
    with pytest.raises(MertlabError, match=message):
        detect_launch(trainer(nodes=nodes))


def test_rank_zero_hands_its_decisions_to_the_ranks_lightning_starts(clean_launch_env):
    lead = Startup(Launch(0, 2, False))
    calls = []
    decided = lead.decide("run", lambda: calls.append(1) or {"run_id": "abc", "step": 4})
    assert decided == {"run_id": "abc", "step": 4} and calls == [1]
    with lead.handed_to_launched_ranks():
        handed = json.loads(os.environ[STARTUP_ENV])
    assert STARTUP_ENV not in os.environ  # only while fit starts the other ranks
    assert handed == {"pid": os.getpid(), "decisions": {"run": {"run_id": "abc", "step": 4}}}
    # a rank started by that process follows the decisions and runs nothing rank 0 ran
    clean_launch_env.setenv(STARTUP_ENV, json.dumps({**handed, "pid": os.getppid()}))
    follower = Startup(Launch(1, 2, True), published=handed_over_decisions())
    assert follower.decide("run", lambda: pytest.fail("rank 0 decides")) == {"run_id": "abc", "step": 4}
    follower.lead_only("data preparation", lambda: pytest.fail("rank 0 prepares the data"))
    with pytest.raises(MertlabError, match="handed over no decision on the checkpoint"):
        follower.decide("checkpoint", dict)
    clean_launch_env.setenv(STARTUP_ENV, json.dumps(handed))  # not from our parent: ignored
    assert handed_over_decisions() is None


# --------------------------------------------------------------------------- agreement
def test_state_digest_sees_every_tensor_byte_and_ignores_key_order():
    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}, "global_step": 4}
    same = {"global_step": 4, "state_dict": {"b": torch.zeros(2), "w": torch.arange(6.0).reshape(2, 3)}}
    assert state_digest(state) == state_digest(same)
    changed = {**state, "state_dict": {**state["state_dict"], "w": state["state_dict"]["w"].clone()}}
    changed["state_dict"]["w"].view(-1).view(torch.uint8)[5] ^= 1  # one bit
    assert state_digest(changed) != state_digest(state)
    assert state_digest({**state, "global_step": 5}) != state_digest(state)
    assert state_digest({"w": torch.zeros(2)}) != state_digest({"w": torch.zeros(2, dtype=torch.float64)})


def test_ranks_that_start_differently_are_one_error_naming_the_rank():
    zero = StartState("run1", "runs/x/last.ckpt", 4, "a" * 64)
    check_agreement([zero, zero, zero])
    with pytest.raises(MertlabError, match=r"rank 2 has run run1, step 2 .* rank 0 run run1, step 4"):
        check_agreement([zero, zero, StartState("run1", "runs/x/last.ckpt", 2, "b" * 64)])
    with pytest.raises(MertlabError, match="rank 1 has run run1, a fresh start"):
        check_agreement([zero, StartState("run1", None, 0, None)])


# --------------------------------------------------------------------------- --resume auto
@pytest.mark.integration
def test_resume_auto_starts_fresh_without_a_checkpoint_and_resumes_with_one(
    demo_dir, tmp_path, tracking_uri, one_thread, capsys
):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec("auto-resume", demo_dir, tmp_path, tracking_uri)))
    assert main(["train", str(path), "--resume", "auto", "--no-progress"]) == 0  # first submission: fresh
    assert main(["train", str(path), "--resume", "auto", "--no-progress", "-o", "trainer.max_steps=4"]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("auto-resume").experiment_id])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, M.LOSS_TOTAL))
    assert len(steps) == len(set(steps)) == 4 and steps[:2] == [0, 1]  # two more steps, in the same run
    last = tmp_path / "runs" / "auto-resume" / run.info.run_id / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    capsys.readouterr()
    # plain --resume still insists on a checkpoint
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_spec("no-checkpoint-yet", demo_dir, tmp_path, tracking_uri)))
    assert main(["train", str(other), "--resume", "--no-progress"]) == 1
    assert "--resume: no checkpoint under" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end
@pytest.mark.integration
def test_sweep_child_started_on_two_ranks_at_once_builds_the_cache_once_and_resumes_after_a_crash(
    demo_dir, tmp_path, tracking_uri, probes_registry, capsys
):
    """Two `mertlab train --parent-run-id` processes started together, as srun does, on a data
    folder whose target cache is not built: rank 0 creates the one child run and builds the
    cache while rank 1 waits, both train it from step 0; killed after the step-2 checkpoint, the
    same command resumes the stale RUNNING child from step 2 on both ranks."""
    raw = tiny_spec("startup-sweep", demo_dir, tmp_path, tracking_uri, max_steps=4, devices=2, strategy="ddp")
    raw["data"]["target_cache"] = str(tmp_path / "targets")  # not built yet
    raw["callbacks"] = {"faults": {"name": "test_faults"}, "probe": {"name": "rank_probe"}}
    raw["sweep"] = {"variants": {"base": {}}}
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(spec_path), "--dry-run", "--no-progress"]) == 0
    command = next(line for line in capsys.readouterr().out.splitlines() if "mertlab train" in line)
    args = shlex.split(command)[1:]  # after `mertlab`, as the sbatch runs it
    assert args[-3:] == ["--resume", "auto", "--no-progress"]
    parent = args[args.index("--parent-run-id") + 1]
    site = probe_plugin_site(tmp_path / "site")
    probes = tmp_path / "probes"

    crashed = launch(args, 2, tmp_path, base_env(site, PROBE_DIR=str(probes), CRASH_AT_STEP="3"))
    assert crashed[0].returncode == 3, crashed[0].stderr[-3000:]  # killed at step 3, after the step-2 checkpoint
    assert crashed[1].returncode != 0
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("startup-sweep").experiment_id
    (child,) = [r for r in client.search_runs([experiment]) if r.data.tags.get(PARENT_TAG) == parent]
    assert child.info.status == "RUNNING"  # left so by the crash
    run_id = child.info.run_id
    starts = [[r for r in probe_records(probes, rank) if r["event"] == "start"] for rank in (0, 1)]
    assert starts[0] == starts[1] == [{"event": "start", "run_id": run_id, "step": 0}]
    assert len(list((tmp_path / "targets").rglob("*.npy"))) == 6  # the cache: every file, built once by rank 0
    last = tmp_path / "runs" / "startup-sweep" / run_id / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2

    resumed = ok(launch(args, 2, tmp_path, base_env(site, PROBE_DIR=str(probes))))
    assert f"variant 'base': resumed, run {run_id}" in resumed[0].stdout
    assert "variant" not in resumed[1].stdout  # the other rank stays quiet
    starts = [[r for r in probe_records(probes, rank) if r["event"] == "start"] for rank in (0, 1)]
    assert starts[0][1] == starts[1][1] == {"event": "start", "run_id": run_id, "step": 2}
    children = [r for r in client.search_runs([experiment]) if r.data.tags.get(PARENT_TAG) == parent]
    assert [c.info.run_id for c in children] == [run_id] and children[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, M.LOSS_TOTAL))
    assert len(steps) == len(set(steps)) == 4 and steps[:2] == [0, 1]  # every step once, in one run
    steps = [
        [(r["step"], r["weights"]) for r in probe_records(probes, rank) if r["event"] == "step"] for rank in (0, 1)
    ]
    assert steps[0] == steps[1]  # the same weights on both ranks after every step
    lock = children[0].data.tags[LOCK_TAG]
    assert lock == str((last.parent.parent / "train.lock").resolve()) and not lock_held(lock)


@pytest.mark.integration
def test_a_local_sweep_refuses_children_on_several_devices(demo_dir, tmp_path, tracking_uri, capsys):
    raw = tiny_spec("wide-sweep", demo_dir, tmp_path, tracking_uri, devices=2, strategy="ddp")
    raw["sweep"] = {"variants": {"base": {}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(path), "--no-progress"]) == 1
    assert "variant 'base': trainer.devices x trainer.num_nodes > 1" in capsys.readouterr().err
    assert MlflowClient(tracking_uri).get_experiment_by_name("wide-sweep") is None  # nothing created
    assert main(["sweep", str(path), "--dry-run", "--no-progress"]) == 0  # their commands are the way
