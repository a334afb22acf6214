"""``mertlab train``: build everything from a spec, fit with Lightning, track in MLflow."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from mertlab.data.audio import list_audio_paths
from mertlab.data.datamodule import AudioDataModule
from mertlab.data.demo import write_demo_dataset
from mertlab.errors import MertlabError
from mertlab.run_summary import log_run_summary
from mertlab.seeding import derive_seed
from mertlab.spec import ExperimentSpec, global_batch_size
from mertlab.target_cache import build_teacher_cache
from mertlab.tracking import log_spec, resolve_tracking_uri, run_tags
from mertlab.train.module import PretrainModule
from mertlab.train.strategy import build_strategy

#: MLflow param: clips per optimizer step over all devices and nodes.
GLOBAL_BATCH_PARAM = "global_batch_size"


@dataclass
class TrainResult:
    run_id: str
    experiment: str
    tracking_uri: str
    checkpoint_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    is_global_zero: bool = True  # False in the other processes of a distributed run


def run_directory(spec: ExperimentSpec) -> Path:
    """``<trainer.output_dir>/<spec name>``; each MLflow run gets a sub-folder of checkpoints."""
    return Path(spec.trainer.output_dir) / spec.name


def find_resume_checkpoint(spec: ExperimentSpec, resume: str | bool) -> Path:
    """An explicit checkpoint path, or the newest ``last.ckpt`` of this spec's runs."""
    if isinstance(resume, str):
        path = Path(resume)
        if not path.exists():
            raise MertlabError(f"--resume: no checkpoint file {path}")
        return path
    # A sharded (fsdp) checkpoint is a folder named last.ckpt.
    candidates = sorted(run_directory(spec).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise MertlabError(f"--resume: no last.ckpt under {run_directory(spec)}/*/checkpoints; train without --resume first")
    return candidates[-1]


def checkpoint_run_id(path: Path) -> str | None:
    """The MLflow run a training checkpoint belongs to (file, or sharded folder's metadata)."""
    if path.is_dir():  # fsdp: the non-tensor state is in the folder's meta.pt
        meta = path / "meta.pt"
        return torch.load(meta, map_location="cpu", weights_only=False).get("mlflow_run_id") if meta.is_file() else None
    return torch.load(path, map_location="cpu", weights_only=False).get("mlflow_run_id")


def prepare_data(spec: ExperimentSpec) -> None:
    """Write the generated demo set when the spec asks for it and the folder has no audio."""
    path = Path(spec.data.path)
    if spec.data.generate_demo and (not path.exists() or not list_audio_paths(path, spec.data.extensions)):
        write_demo_dataset(path)


class _DropAdvertisements(logging.Filter):
    """Lightning prints cloud-service tips on every run; they are noise in a research log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence Lightning messages that are expected by design here (frozen teachers are in eval
    mode; few batches per epoch on small data sets; no DataLoader workers by default)."""
    for message in (".*does not have many workers.*", ".*Checkpoint directory .* exists and is not empty.*",
                    ".*module\\(s\\) in eval mode.*", ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=message)
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisements) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_DropAdvertisements())


def make_trainer(
    spec: ExperimentSpec, strategy: Any, logger: Any, callbacks: list[Any], has_val: bool, progress: bool
) -> L.Trainer:
    """The Lightning Trainer of ``spec.trainer`` (strategy, devices and nodes included)."""
    t = spec.trainer
    return L.Trainer(
        max_steps=t.max_steps,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=spec.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps if has_val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches if has_val else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        use_distributed_sampler=False,  # AudioDataModule's EpochSampler splits the data per rank
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_directory(spec)),
        enable_progress_bar=progress,
        enable_model_summary=progress,
    )


def train(
    spec: ExperimentSpec, resume: str | bool = False, registry: Any = None, progress: bool = True, run_id: str | None = None
) -> TrainResult:
    """Train ``spec``; with ``resume`` continue a checkpoint and its MLflow run.

    ``run_id`` logs into an MLflow run that already exists (a sweep child made by
    :mod:`mertlab.sweep`, which sets its tags); by default a new run is created. At the end the
    run's ``summary/*`` metrics are logged (:mod:`mertlab.run_summary`).
    """
    if registry is None:
        from mertlab.registry import get_registry

        registry = get_registry()
    quiet_lightning()
    L.seed_everything(spec.seed, workers=True, verbose=False)

    ckpt_path = None
    if resume:
        ckpt_path = find_resume_checkpoint(spec, resume)
        ckpt_run = checkpoint_run_id(ckpt_path)
        if run_id and ckpt_run and ckpt_run != run_id:
            raise MertlabError(f"--resume: {ckpt_path} belongs to MLflow run {ckpt_run}, not {run_id}")
        run_id = ckpt_run or run_id

    rank = rank_zero_only.rank  # from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID)
    prepare_data(spec)
    module = PretrainModule(spec, registry)
    strategy = build_strategy(spec.trainer, module.backbone)  # misconfigurations surface before MLflow
    # Same weights on every rank (above), but each rank its own dropout stream from here on.
    torch.manual_seed(derive_seed("dropout", spec.seed, rank))
    datamodule = AudioDataModule(spec.data, module.backbone.sample_rate, spec.seed)
    datamodule.setup()  # data errors surface before an MLflow run is created
    files = datamodule.train_files + datamodule.val_files
    if spec.data.target_cache and spec.data.build_target_cache:
        for alias, teacher in module.teachers.items():
            build_teacher_cache(teacher, files, spec.data.target_cache, alias=alias, progress=progress)
    module.target_source.check_files(files)

    tracking_uri = resolve_tracking_uri(spec)
    experiment = spec.tracking.experiment or spec.name
    logger = MLFlowLogger(
        experiment_name=experiment,
        tracking_uri=tracking_uri,
        run_name=spec.tracking.run_name or spec.name,
        tags=None if run_id else run_tags(spec, registry),
        run_id=run_id,
    )
    if rank == 0:  # other ranks log nothing (Lightning's logger is a no-op there too)
        log_spec(logger, spec)
        logger.log_hyperparams({GLOBAL_BATCH_PARAM: global_batch_size(spec)})

    # Other ranks have no MLflow run: ModelCheckpoint broadcasts rank 0's folder in setup.
    checkpoint_dir = run_directory(spec) / str(logger.run_id) / "checkpoints"
    has_val = bool(datamodule.val_files) and spec.trainer.limit_val_batches > 0
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-step{step}",
        auto_insert_metric_name=False,
        monitor="val/loss/total" if has_val else None,
        mode="min",
        save_top_k=1,
        save_last=True,
        # With validation, save right after it (on_validation_end), so "best" is chosen on this
        # step's val/loss/total; saving every n train steps would run before that step's
        # validation and rank the checkpoint by the previous score.
        every_n_train_steps=None if has_val else spec.trainer.val_every_n_steps,
        save_on_train_epoch_end=False,
    )
    callbacks = [registry.build("callback", c.name, c.params) for c in spec.callbacks.values()]
    try:
        trainer = make_trainer(spec, strategy, logger, [*callbacks, checkpoint], has_val, progress)
    except (ValueError, MisconfigurationException) as exc:  # e.g. more devices than the machine has
        raise MertlabError(f"trainer: {exc}") from None
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    checkpoint_dir = Path(checkpoint.dirpath)  # rank 0's, on every rank
    if trainer.state.finished:  # max_steps may end mid-epoch: make last.ckpt the final state
        # Every rank calls it (FSDP gathers or writes shards); DDP writes on rank 0 only.
        trainer.save_checkpoint(checkpoint_dir / "last.ckpt", weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if trainer.is_global_zero:
        metrics.update(log_run_summary(logger.experiment, logger.run_id, trainer.global_step))
    return TrainResult(logger.run_id, experiment, tracking_uri, checkpoint_dir, metrics, trainer.is_global_zero)
