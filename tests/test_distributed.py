"""Scale-out: randomness per rank and micro-batch, strategies from the spec, two-process DDP
(gloo on CPU) against one process, the best checkpoint, teachers outside the parallel wrapper.
FSDP needs CUDA in Lightning: its tests are in tests/test_gpu.py (marked ``gpu``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from mertlab.data.audio import probe
from mertlab.data.dataset import AudioBatch, CropDataset
from mertlab.data.sampler import CropKey, ResumableBatchSampler
from mertlab.errors import MertlabError, SpecError
from mertlab.experiment.spec import resolve_spec
from mertlab.toolkit.seeding import CROP, LAYER_DROP, derive_seed
from mertlab.train.module import PretrainModule
from mertlab.train.run import GLOBAL_BATCH_PARAM, train
from mertlab.train.strategy import build_strategy
from sampler_support import stream

pytestmark = pytest.mark.filterwarnings("ignore")
MERTLAB = str(Path(sys.executable).parent / "mertlab")
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "projection_dropout": 0.0}


def raw_spec(demo_dir, tmp_path, tracking_uri, **trainer) -> dict:
    """Tiny transformer + CQT regression. Span masking with span 1, mask_prob 0.5 and no overlap
    masks exactly 37 of a 1 s clip's 74 frames, so every rank averages its loss over the same
    number of frames and the mean over ranks is the one-process mean (no mixup: it pairs clips
    within a device's batch)."""
    return {
        "name": "dist",
        "seed": 3,
        "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.25},
        "backbone": {"name": "transformer", "params": {"preset": "tiny", **NO_DROPOUT, "layer_drop": 0.5}},
        "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}}},
        "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
        "masking": {"name": "span", "params": {"mask_prob": 0.5, "span_length": 1, "no_overlap": True}},
        "augment": {"mixup": {"probability": 0.0}},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "trainer": {
            "max_steps": 4,
            "log_every_n_steps": 1,
            "val_every_n_steps": 2,
            "limit_val_batches": 1,
            "output_dir": str(tmp_path / "runs"),
            "accelerator": "cpu",
            **trainer,
        },
        "tracking": {"tracking_uri": tracking_uri},
        "callbacks": {"stability": {"name": "stability", "params": {"every_n_steps": 2}}},
    }


# --------------------------------------------------------------------------- randomness
def test_masks_differ_across_micro_batches_and_ranks_and_match_one_process(
    demo_dir, tmp_path, tracking_uri, one_thread
):
    module = PretrainModule(resolve_spec(raw_spec(demo_dir, tmp_path, tracking_uri)))
    padding = torch.zeros(4, 74, dtype=torch.bool)

    def masks(rank: int, world: int, accumulation: int, batch_idx: int, clips: int) -> torch.Tensor:
        module.distributed_position = lambda: (rank, world, accumulation)
        return module.frame_masks(padding[:clips], "train", batch_idx)

    micro0, micro1 = masks(0, 1, 2, 0, 4), masks(0, 1, 2, 1, 4)  # two micro-batches of one step
    rank0, rank1 = masks(0, 2, 1, 0, 2), masks(1, 2, 1, 0, 2)
    assert not torch.equal(micro0, micro1)
    assert not torch.equal(rank0, rank1)
    assert all(int(m.sum()) == 37 for m in (*micro0, *rank0, *rank1))
    # Clip i of rank r is clip i * world + r of the global batch: one process draws the same masks.
    one = masks(0, 1, 1, 0, 4)
    assert torch.equal(torch.stack([rank0[0], rank1[0], rank0[1], rank1[1]]), one)
    # Rows of one batch differ from each other too.
    assert len({tuple(row.tolist()) for row in one}) == 4


def test_layer_drop_is_the_same_on_every_rank_and_differs_across_micro_batches(
    demo_dir, tmp_path, tracking_uri, one_thread
):
    module = PretrainModule(resolve_spec(raw_spec(demo_dir, tmp_path, tracking_uri)))
    seeds = {}
    for rank in (0, 1):
        for batch_idx in (0, 1):
            module.distributed_position = lambda rank=rank: (rank, 2, 2)
            seeds[rank, batch_idx] = module.layer_drop_seed(batch_idx)
    assert seeds[0, 0] == seeds[1, 0] and seeds[0, 1] == seeds[1, 1] and seeds[0, 0] != seeds[0, 1]
    # ...and the backbone's decisions follow that seed, not the global RNG.
    backbone = module.backbone.train()
    wav = torch.randn(1, 8000)

    def skipped(seed: int) -> list[int]:
        torch.manual_seed(seed)  # a different global RNG state each time must not matter
        backbone.set_step_seed(seeds[0, 0])
        hidden = backbone(wav).hidden_states
        return [i for i in range(len(hidden) - 1) if torch.equal(hidden[i], hidden[i + 1])]

    assert skipped(1) == skipped(2)


def test_ranks_read_interleaved_shares_of_one_stream_and_crops_depend_on_file_and_epoch_only(demo_dir):
    files = [probe(p) for p in sorted(Path(demo_dir).glob("*.wav"))]
    dataset = CropDataset(files, 24000, 1.0, random_crops=True, seed=5)
    one = list(ResumableBatchSampler(len(files), 4, True, seed=5))  # one process, batch 4
    ranks = [list(ResumableBatchSampler(len(files), 2, True, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == len(files) // 4
    for batch, mine, theirs in zip(one, *ranks, strict=True):  # clip i of rank r is clip i * 2 + r of the global batch
        assert [k for pair in zip(mine, theirs, strict=True) for k in pair] == batch
    key = one[0][0]
    assert torch.equal(dataset[key].item.wav, CropDataset(files, 24000, 1.0, random_crops=True, seed=5)[key].item.wav)
    epoch1 = CropKey(key.index, derive_seed(5, CROP, 1, key.index), 1, 0)
    assert (
        dataset[key].item.start_seconds != dataset[epoch1].item.start_seconds or dataset[key].item.file.seconds <= 1.01
    )


@pytest.mark.parametrize("size, drop_last", [(11, True), (5, False), (3, False)])
def test_rank_samplers_resume_exactly_and_on_another_world_size(size, drop_last):
    def make(world, rank=0):
        return ResumableBatchSampler(size, 4 // world, drop_last, seed=7, num_replicas=world, rank=rank)

    total = 3 * len(make(2))
    full = [stream(make(2, r), total) for r in (0, 1)]
    one = stream(make(1), total)
    for cut in range(total):
        for rank in (0, 1):
            first = make(2, rank)
            head = stream(first, cut)
            resumed = make(2, rank)
            resumed.load_state_dict(first.state_dict())
            assert head + stream(resumed, total - cut) == full[rank], (cut, rank)
        # a two-rank position continues in one process with the same global batch
        single = make(1)
        single.load_state_dict(first.state_dict())
        assert stream(single, total - cut) == one[cut:], cut
    # every rank gets a clip in every batch (a last partial global batch is padded, not empty)
    assert all(len(batch) == len(other) >= 1 for batch, other in zip(*full, strict=True))
    if not drop_last:  # the ranks together cover every file of an epoch
        epoch = [k.index for r in (0, 1) for batch in full[r] for k in batch if k.epoch == 0]
        assert set(epoch) == set(range(size))


# --------------------------------------------------------------------------- spec + strategy
def test_global_batch_size_is_checked_against_devices_nodes_and_accumulation(demo_dir, tmp_path, tracking_uri):
    raw = raw_spec(demo_dir, tmp_path, tracking_uri, devices=2, num_nodes=2, accumulate_grad_batches=2)
    raw["data"]["global_batch_size"] = 16
    assert resolve_spec(raw).data.global_batch_size == 16
    raw["data"]["global_batch_size"] = 12
    with pytest.raises(SpecError, match=r"data.global_batch_size: 12 clips per step expected.*= 16"):
        resolve_spec(raw)


def test_strategies_from_the_spec(demo_dir, tmp_path, tracking_uri):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from mertlab.plugins.backbones.transformer.layers import EncoderLayer

    spec = resolve_spec(raw_spec(demo_dir, tmp_path, tracking_uri))
    backbone = PretrainModule(spec).backbone
    assert build_strategy(spec.trainer, backbone) == "auto"
    ddp = build_strategy(spec.trainer.model_copy(update={"devices": 2}), backbone)  # auto on 2 devices
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["find_unused_parameters"] is True
    fsdp_trainer = spec.trainer.model_copy(
        update={"strategy": "fsdp", "activation_checkpointing": True, "accelerator": "cuda"}
    )
    fsdp = build_strategy(fsdp_trainer, backbone)
    assert isinstance(fsdp, FSDPStrategy) and fsdp._state_dict_type == "sharded"
    assert fsdp.kwargs["auto_wrap_policy"]._module_classes == {EncoderLayer}
    # bf16-mixed: bf16 compute, reduction and buffers, but FSDP does not cast the batch (the
    # audio the teachers read, the crops' float64 start times); 32: float32 throughout
    for precision, dtype in (("bf16-mixed", torch.bfloat16), ("32", torch.float32)):
        policy = build_strategy(fsdp_trainer.model_copy(update={"precision": precision}), backbone)
        policy = policy.mixed_precision_config
        assert (policy.param_dtype, policy.reduce_dtype, policy.buffer_dtype) == (dtype,) * 3
        assert policy.cast_root_forward_inputs is False and policy.cast_forward_inputs is False
    with pytest.raises(MertlabError, match="trainer.strategy: fsdp needs CUDA GPUs"):
        build_strategy(spec.trainer.model_copy(update={"strategy": "fsdp"}), backbone)


# --------------------------------------------------------------------------- end to end
@pytest.mark.integration
def test_best_checkpoint_has_the_lowest_validation_loss(demo_dir, tmp_path, tracking_uri, one_thread):
    raw = raw_spec(demo_dir, tmp_path, tracking_uri, max_steps=6, val_every_n_steps=1)
    raw["optim"] = {"lr": 3e-2, "warmup_steps": 0}  # a bumpy validation curve
    result = train(resolve_spec(raw), progress=False)
    history = {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(result.run_id, "val/loss/total")}
    assert len(history) == 6
    (best,) = result.checkpoint_dir.glob("best-step*.ckpt")
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    # The score it was ranked by is the validation of its own step (logged at global_step - 1)...
    assert state["best_model_score"].item() == pytest.approx(history[ckpt["global_step"] - 1], abs=1e-6)
    # ...and the lowest of the run.
    assert state["best_model_score"].item() == pytest.approx(min(history.values()), abs=1e-6)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([MERTLAB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.integration
def test_two_process_ddp_matches_one_process_logs_once_and_resumes_in_one_process(
    demo_dir, tmp_path, tracking_uri, one_thread
):
    """Same global batch (2 ranks x 2 clips vs 1 x 4), layer drop on: the loss of every step
    agrees within 1e-4 relative (the ranks' all-reduce sums in another order than one process)."""
    raw = {**raw_spec(demo_dir, tmp_path, tracking_uri), "name": "dist-ddp"}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    # Layer drop really skips layers within these steps (the decisions are reproducible).
    drops = [
        [torch.rand((), generator=torch.Generator().manual_seed(derive_seed(3, LAYER_DROP, step, 0))) < 0.5]
        for step in range(4)
    ]
    assert any(d[0] for d in drops)
    train(resolve_spec({**raw, "data": {**raw["data"], "batch_size": 4}}), progress=False)  # the one-process reference
    out = run_cli(
        ["train", str(spec_path), "-o", "trainer.devices=2", "-o", "trainer.strategy=ddp", "--no-progress"], tmp_path
    )
    assert out.stdout.count("finished (experiment") == 1  # rank 1 prints nothing

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("dist-ddp").experiment_id], order_by=["start_time ASC"])
    assert len(runs) == 2  # the two-process run is one MLflow run
    one, two = runs

    def losses(run) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss/total"))

    assert [s for s, _ in losses(two)] == [0, 1, 2, 3]  # logged once per step
    for (_, a), (_, b) in zip(losses(one), losses(two), strict=False):
        assert b == pytest.approx(a, rel=1e-4)
    assert one.data.params[GLOBAL_BATCH_PARAM] == two.data.params[GLOBAL_BATCH_PARAM] == "4"
    assert two.data.metrics["throughput/samples_per_s"] > 0
    run_dirs = list((tmp_path / "runs" / "dist-ddp").iterdir())
    assert sorted(p.name for p in run_dirs) == sorted([one.info.run_id, two.info.run_id])
    ckpt_dir = tmp_path / "runs" / "dist-ddp" / two.info.run_id / "checkpoints"
    assert len(list(ckpt_dir.glob("best-step*.ckpt"))) == 1 and (ckpt_dir / "last.ckpt").is_file()

    # The DDP checkpoint resumes in one process (same MLflow run, same global batch).
    run_cli(
        [
            "train",
            str(spec_path),
            "--resume",
            str(ckpt_dir / "last.ckpt"),
            "-o",
            "data.batch_size=4",
            "-o",
            "trainer.max_steps=6",
            "--no-progress",
        ],
        tmp_path,
    )
    resumed = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6 and resumed["mlflow_run_id"] == two.info.run_id
    steps = [s for s, _ in losses(client.get_run(two.info.run_id))]
    assert len(steps) == 6 and steps[:4] == [0, 1, 2, 3] and steps[4] > 3  # two more steps, same run
    assert len(client.search_runs([one.info.experiment_id])) == 2


@pytest.mark.integration
def test_two_process_ddp_skips_nonfinite_steps_on_every_rank(demo_dir, tmp_path, tracking_uri, one_thread):
    """Lightning refuses a None loss from a rank in distributed training: a skipped step still
    runs backward on every rank (a zero-weighted loss) and drops the gradients, so the weights
    and the optimizer state stay untouched, the same on both ranks, and the run finishes."""
    raw = {**raw_spec(demo_dir, tmp_path, tracking_uri), "name": "dist-nonfinite", "callbacks": {}}
    raw["objectives"] = {"cqt_recon": {"name": "masked_regression", "teacher": "cqt", "weight": 1e308}}
    raw["trainer"] = {**raw["trainer"], "max_steps": 2, "limit_val_batches": 0}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    run_cli(
        ["train", str(spec_path), "-o", "trainer.devices=2", "-o", "trainer.strategy=ddp", "--no-progress"], tmp_path
    )
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dist-nonfinite").experiment_id])
    assert run.info.status == "FINISHED"
    counts = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "stability/nonfinite_steps")}
    assert counts == {0: 1.0, 1: 2.0}
    ckpt = torch.load(
        tmp_path / "runs" / "dist-nonfinite" / run.info.run_id / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=False,
    )
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"][0]["state"] == {}
    L.seed_everything(3, verbose=False)  # as train() does before building the module: the initial weights
    initial = PretrainModule(resolve_spec(raw)).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in ckpt["state_dict"].items())


def test_a_sharded_checkpoint_folder_is_resumable_and_named_where_one_file_is_needed(tmp_path):
    """FSDP writes last.ckpt as a folder; --resume reads its meta.pt (weights-only), while
    export, probe and extract ask for the consolidated file."""
    from mertlab.toolkit.checkpoint import load_backbone
    from mertlab.train.checkpoint_io import select_resume_checkpoint

    folder = tmp_path / "runs" / "abc123" / "checkpoints" / "last.ckpt"
    folder.mkdir(parents=True)
    torch.save({"global_step": 4, "mlflow_run_id": "abc123"}, folder / "meta.pt")
    point = select_resume_checkpoint(tmp_path / "runs")
    assert point.path == folder and point.checkpoint["mlflow_run_id"] == "abc123"
    assert select_resume_checkpoint(tmp_path / "runs", str(folder)).checkpoint["global_step"] == 4
    with pytest.raises(MertlabError, match="sharded \\(fsdp\\) checkpoint folder; consolidate it"):
        load_backbone(folder)


# --------------------------------------------------------------------------- teachers outside the wrapper
def teacher_spec(demo_dir, tmp_path, tracking_uri, **trainer) -> dict:
    """Two teachers with buffers: the CQT (kernels) and BEST-RQ (projection, codebooks)."""
    raw = raw_spec(demo_dir, tmp_path, tracking_uri, **trainer)
    raw["teachers"]["codes"] = {"name": "bestrq", "params": {"codebook_size": 64}}
    raw["objectives"]["codes_pred"] = {"name": "masked_prediction", "teacher": "codes"}
    raw["callbacks"] = {}
    return raw


def teacher_tensors(module: PretrainModule) -> list[torch.Tensor]:
    return [t for teacher in module.teachers.values() for t in (*teacher.parameters(), *teacher.buffers())]


def test_teachers_are_outside_the_module_stay_float32_and_run_without_autocast(
    demo_dir, tmp_path, tracking_uri, one_thread
):
    from mertlab.contracts import Teacher
    from mertlab.data.audio import read_segment

    module = PretrainModule(resolve_spec(teacher_spec(demo_dir, tmp_path, tracking_uri)))
    tensors = teacher_tensors(module)
    assert any(True for teacher in module.teachers.values() for _ in teacher.buffers())
    assert not any(isinstance(m, Teacher) for m in module.modules())
    assert not [k for k in module.state_dict() if k.startswith("teachers.")]
    owned = {id(t) for t in (*module.parameters(), *module.buffers())}
    assert not [t for t in tensors if id(t) in owned]

    module.to(torch.bfloat16)  # what Lightning's *-true precisions do to the trained module
    assert {t.dtype for t in teacher_tensors(module) if t.is_floating_point()} == {torch.float32}
    assert module.backbone.feature_projection.projection.weight.dtype == torch.bfloat16
    module.to(torch.float32)

    files = [probe(p) for p in sorted(Path(demo_dir).glob("*.wav"))[:2]]
    wav = torch.stack([read_segment(f, 0, 24000) for f in files])
    batch = AudioBatch(wav, torch.tensor([24000, 20000]), tuple(files), torch.zeros(2, dtype=torch.float64))
    num_frames, frame_lengths, _ = module.frame_padding(batch.wav, batch.lengths)
    plain = module.compute_targets(batch, num_frames, frame_lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16-mixed training step
        mixed = module.compute_targets(batch, num_frames, frame_lengths)
    assert mixed["cqt"].values.dtype == torch.float32
    for alias in ("cqt", "codes"):
        assert torch.equal(mixed[alias].values, plain[alias].values), alias
    assert {t.dtype for t in teacher_tensors(module) if t.is_floating_point()} == {torch.float32}


def test_checkpoints_hold_teacher_fingerprints_not_weights_and_older_ones_still_load(
    demo_dir, tmp_path, tracking_uri, one_thread, caplog
):
    raw = teacher_spec(demo_dir, tmp_path, tracking_uri)
    module = PretrainModule(resolve_spec(raw))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["mertlab_teachers"]) == {"cqt", "codes"}
    assert checkpoint["mertlab_teachers"]["codes"]["fingerprint"] == module.teachers["codes"].fingerprint()
    # a checkpoint written while teachers were submodules: their weights are ignored
    older = {
        **checkpoint["state_dict"],
        **{f"teachers.codes.{k}": v for k, v in module.teachers["codes"].state_dict().items()},
    }
    assert any(k.startswith("teachers.") for k in older)
    fresh = PretrainModule(resolve_spec(raw))
    fresh.load_state_dict(older)  # strict
    hook_input = {"state_dict": dict(older), "mertlab_teachers": checkpoint["mertlab_teachers"]}
    fresh.on_load_checkpoint(hook_input)
    assert not [k for k in hook_input["state_dict"] if k.startswith("teachers.")]
    assert "other than the checkpoint's" not in caplog.text
    # another teacher than the one the checkpoint trained with: said on resume
    raw["teachers"]["codes"]["params"]["seed"] = 1
    PretrainModule(resolve_spec(raw)).on_load_checkpoint(hook_input)
    assert "resuming with teachers other than the checkpoint's: codes (bestrq" in caplog.text


@pytest.mark.integration
def test_two_process_ddp_bf16_registers_no_teacher_tensor_and_keeps_teachers_float32(
    demo_dir, tmp_path, tracking_uri, one_thread
):
    """Under DDP with bf16-mixed autocast: DDP reaches (so registers and broadcasts) none of
    the teachers' tensors, the teachers stay float32 and their targets equal the autocast-off
    ones, and the checkpoint holds no teacher tensor."""
    from wrapper_report import check_teachers_outside, run_reports

    raw = teacher_spec(demo_dir, tmp_path, tracking_uri, devices=2, strategy="ddp", precision="bf16-mixed")
    raw["name"] = "dist-teachers"
    raw["trainer"] = {**raw["trainer"], "max_steps": 2, "limit_val_batches": 0}
    reports = run_reports(raw, tmp_path)
    check_teachers_outside(reports, "DistributedDataParallel", steps=2, device="cpu")
    assert [r["world"] for r in reports] == [2, 2] and all(r["wrapper_buffers"] == 0 for r in reports)
    (last,) = (tmp_path / "runs" / "dist-teachers").glob("*/checkpoints/last.ckpt")
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert not [k for k in ckpt["state_dict"] if k.startswith("teachers.")]
    fresh = PretrainModule(resolve_spec(raw))
    assert ckpt["mertlab_teachers"] == fresh.teachers.fingerprints()
    teacher_shapes = {tuple(t.shape) for t in teacher_tensors(fresh) if t.numel() > 1}
    model_shapes = {tuple(t.shape) for t in fresh.state_dict().values()}
    assert {tuple(t.shape) for t in ckpt["state_dict"].values()} == model_shapes
    assert teacher_shapes - model_shapes  # the teachers' tensors would have shown up
