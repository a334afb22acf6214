"""``mertlab train``: build everything from a spec, fit with Lightning, track in MLflow."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint

from mertlab.data.audio import list_audio_paths
from mertlab.data.datamodule import AudioDataModule
from mertlab.data.demo import write_demo_dataset
from mertlab.data.demo_tasks import DEMO_TASKS, demo_tasks_dir, write_demo_tasks
from mertlab.data.shards import is_shard_path
from mertlab.errors import MertlabError
from mertlab.experiment import metric_names as M
from mertlab.experiment.run_summary import log_run_summary
from mertlab.experiment.spec import ExperimentSpec, global_batch_size
from mertlab.experiment.tracking import (
    PROCESS_TAG,
    check_store,
    ensure_experiment,
    log_spec,
    mark_crashed_runs,
    process_identity,
    resolve_tracking_uri,
    run_tags,
    tag_failure,
)
from mertlab.teachers.target_cache import build_teacher_cache
from mertlab.toolkit.atomic import check_writable
from mertlab.toolkit.paths import inside
from mertlab.train.checkpoint_io import ResumePoint, SafeCheckpointIO, select_resume_checkpoint
from mertlab.train.module import PretrainModule
from mertlab.train.strategy import build_strategy, process_rank
from mertlab.train.tracking_logger import ResilientMLFlowLogger, logged_steps

log = logging.getLogger(__name__)
SKIPPED_FILES_ARTIFACT = "data/skipped_files.tsv"
#: MLflow param: clips per optimizer step over all devices and nodes.
GLOBAL_BATCH_PARAM = "global_batch_size"


@dataclass
class TrainResult:
    run_id: str
    experiment: str
    tracking_uri: str
    checkpoint_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_files: list[Any] = field(default_factory=list)  # mertlab.data.skipped.SkippedFile
    is_global_zero: bool = True  # False in the other processes of a distributed run


def run_directory(spec: ExperimentSpec) -> Path:
    """``<trainer.output_dir>/<spec name>``; each MLflow run gets a sub-folder of checkpoints."""
    return inside(spec.trainer.output_dir, spec.name, what="name")


def find_resume_checkpoint(spec: ExperimentSpec, resume: str | bool) -> ResumePoint:
    """An explicit checkpoint path, or the newest checkpoint of this spec's runs that loads
    (:func:`~mertlab.train.checkpoint_io.select_resume_checkpoint`; a sharded (fsdp) checkpoint
    is a folder)."""
    return select_resume_checkpoint(run_directory(spec), resume if isinstance(resume, str) else None)


def prepare_data(spec: ExperimentSpec, progress: bool = True) -> None:
    """With ``data.generate_demo``: write the generated demo set when the folder has no audio,
    and the labelled demo probe tasks to ``<data.path>-tasks/`` when their CSVs are missing
    (``progress``: their progress bars)."""
    if not spec.data.generate_demo or is_shard_path(spec.data.path):
        return
    path = Path(spec.data.path)
    if not path.exists() or not list_audio_paths(path, spec.data.extensions):
        write_demo_dataset(path, progress=progress)
    tasks = demo_tasks_dir(path)
    missing = [name for name in DEMO_TASKS if not (tasks / f"{name}.csv").is_file()]
    if missing:
        write_demo_tasks(tasks, names=missing, progress=progress)


class _DropAdvertisements(logging.Filter):
    """Lightning prints cloud-service tips on every run; they are noise in a research log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence Lightning messages that are expected by design here (frozen teachers are in eval
    mode; few batches per epoch on small data sets; no DataLoader workers by default)."""
    for message in (
        ".*does not have many workers.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*module\\(s\\) in eval mode.*",
        ".*smaller than the logging interval.*",
        ".*`training_step` returned `None`.*",  # a skipped (non-finite) step, counted by mertlab
        ".*`IterableDataset` has `__len__` defined.*",
    ):  # shards: litdata splits them per worker itself
        warnings.filterwarnings("ignore", message=message)
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisements) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_DropAdvertisements())


def make_trainer(
    spec: ExperimentSpec,
    strategy: Any,
    logger: Any,
    callbacks: list[Any],
    plugins: list[Any],
    has_val: bool,
    progress: bool,
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
        plugins=plugins,
        use_distributed_sampler=False,  # AudioDataModule's samplers split the data per rank (exact resume)
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_directory(spec)),
        enable_progress_bar=progress,
        enable_model_summary=progress,
    )


def train(
    spec: ExperimentSpec,
    resume: str | bool = False,
    registry: Any = None,
    progress: bool = True,
    run_id: str | None = None,
    profile_steps: int | None = None,
) -> TrainResult:
    """Train ``spec``; with ``resume`` continue a checkpoint and its MLflow run.

    ``run_id`` logs into an MLflow run that already exists (a sweep child made by
    :mod:`mertlab.experiment.sweep`, which sets its tags); by default a new run is created. At the end the
    run's ``summary/*`` metrics are logged (:mod:`mertlab.experiment.run_summary`). ``profile_steps``: a
    torch.profiler trace of that many steps after warm-up, logged with a top-ops table
    (:mod:`mertlab.train.profiling`).
    """
    if registry is None:
        from mertlab.plugin_system.registry import get_registry

        registry = get_registry()
    quiet_lightning()
    L.seed_everything(spec.seed, workers=True, verbose=False)

    ckpt_path = None
    checkpoint_io = SafeCheckpointIO()
    if resume:
        point = find_resume_checkpoint(spec, resume)
        ckpt_path = point.path
        if point.path.is_file():  # a sharded folder is read by the fsdp strategy itself
            checkpoint_io.preload(point.path, point.checkpoint)
        ckpt_run = point.checkpoint.get("mlflow_run_id")
        if run_id and ckpt_run and ckpt_run != run_id:
            raise MertlabError(f"--resume: {ckpt_path} belongs to MLflow run {ckpt_run}, not {run_id}")
        run_id = ckpt_run or run_id

    # Rank 0 alone prepares data, checks the store and keeps the MLflow run; with Lightning's own
    # launcher the other ranks start (as copies of this command) once rank 0 reaches fit.
    lead = process_rank(spec.trainer) == 0
    tracking_uri = resolve_tracking_uri(spec)
    experiment = spec.tracking.experiment or spec.name
    client = (
        check_store(tracking_uri, spec.tracking.connect_timeout) if lead else None
    )  # one clear error, before any work
    check_writable(run_directory(spec), "trainer.output_dir")  # before any work or MLflow run
    if lead:
        prepare_data(spec, progress)
    module = PretrainModule(spec, registry)
    strategy = build_strategy(spec.trainer, module.backbone)  # misconfigurations surface before MLflow
    datamodule = AudioDataModule(
        spec.data, module.backbone.sample_rate, spec.seed, min_seconds=shortest_usable_seconds(module)
    )
    datamodule.setup()  # data errors surface before an MLflow run is created
    files = datamodule.train_files + datamodule.val_files
    if lead and spec.data.target_cache and spec.data.build_target_cache and files:
        for alias, teacher in module.teachers.items():
            build_teacher_cache(teacher, files, spec.data.target_cache, alias=alias, progress=progress)
    module.target_source.check_files(files)

    if lead:
        ensure_experiment(client, experiment)  # artifacts beside the store, MLflow's training view
        for crashed in mark_crashed_runs(client, experiment):
            log.warning("MLflow run %s was left RUNNING by a training process that is gone: marked FAILED", crashed)
        if run_id:
            client.update_run(run_id, status="RUNNING")
    # On other ranks the logger is inert (Lightning logs from rank 0 only) and has no new run.
    logger = ResilientMLFlowLogger(
        experiment_name=experiment,
        tracking_uri=tracking_uri,
        run_name=spec.tracking.run_name or spec.name,
        tags=None if run_id else run_tags(spec, registry),
        run_id=run_id,
        skip_logged_steps=logged_steps(client, run_id) if lead and resume and run_id else None,
        flush_timeout=spec.tracking.connect_timeout,
    )
    if lead:
        log_spec(logger, spec)
        if GLOBAL_BATCH_PARAM not in client.get_run(logger.run_id).data.params:
            logger.log_hyperparams({GLOBAL_BATCH_PARAM: global_batch_size(spec)})
        logger.experiment.set_tag(logger.run_id, PROCESS_TAG, process_identity())
        checkpoint_dir = inside(run_directory(spec), logger.run_id, what="MLflow run id") / "checkpoints"
        logger.unsent_file = checkpoint_dir.parent / "unsent_metrics.jsonl"
    else:  # ModelCheckpoint takes rank 0's folder (a broadcast in its setup)
        checkpoint_dir = run_directory(spec) / str(run_id or "rank-0-run") / "checkpoints"
    has_val = datamodule.has_validation() and spec.trainer.limit_val_batches > 0
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
    try:
        trainer = fit(
            spec,
            module,
            datamodule,
            strategy,
            logger,
            checkpoint,
            checkpoint_io,
            has_val,
            progress,
            registry,
            profile_steps,
            ckpt_path,
        )
    except Exception as exc:
        if lead:  # the run's reason for failing, next to its FAILED status
            tag_failure(client, logger.run_id, exc)
        raise
    checkpoint_dir = Path(checkpoint.dirpath)  # rank 0's, on every rank
    if trainer.state.finished:  # max_steps may end mid-epoch: make last.ckpt the final state
        # Every rank calls it (FSDP gathers or writes shards); DDP writes on rank 0 only.
        trainer.save_checkpoint(checkpoint_dir / "last.ckpt", weights_only=False)
    skipped = gather_skipped(trainer, datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if trainer.is_global_zero:
        finish_run(logger, client, tracking_uri, module, datamodule, trainer.global_step, metrics)
    if module.stop_reason:
        raise MertlabError(f"{module.stop_reason}; checkpoint: {checkpoint_dir / 'last.ckpt'}")
    return TrainResult(
        logger.run_id, experiment, tracking_uri, checkpoint_dir, metrics, skipped, trainer.is_global_zero
    )


def fit(
    spec: ExperimentSpec,
    module: PretrainModule,
    datamodule: AudioDataModule,
    strategy: Any,
    logger: ResilientMLFlowLogger,
    checkpoint: ModelCheckpoint,
    checkpoint_io: SafeCheckpointIO,
    has_val: bool,
    progress: bool,
    registry: Any,
    profile_steps: int | None,
    ckpt_path: Path | None,
) -> L.Trainer:
    """Build the spec's callbacks and the Trainer, and fit ``module``; returns the Trainer."""
    callbacks = [registry.build("callback", c.name, c.params) for c in spec.callbacks.values()]
    if profile_steps:
        from mertlab.train.profiling import ProfileSteps

        callbacks.append(ProfileSteps(profile_steps))
    try:
        trainer = make_trainer(spec, strategy, logger, [*callbacks, checkpoint], [checkpoint_io], has_val, progress)
    except (ValueError, MisconfigurationException) as exc:  # e.g. more devices than the machine has
        raise MertlabError(f"trainer: {exc}") from None
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return trainer


def gather_skipped(trainer: L.Trainer, datamodule: AudioDataModule) -> list[Any]:
    """The bad files every rank skipped (each rank reads its own share of the data)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return list(datamodule.skipped)
    found: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(found, list(datamodule.skipped))
    for items in found:
        for item in items:
            datamodule.skipped.add(item)
    return list(datamodule.skipped)


def finish_run(
    logger: ResilientMLFlowLogger,
    client: Any,
    tracking_uri: str,
    module: PretrainModule,
    datamodule: AudioDataModule,
    step: int,
    metrics: dict[str, float],
) -> None:
    """Rank 0, after fit: send the queued metrics, log the skipped files and the run summary
    (into ``metrics`` too), and mark a run that stopped itself FAILED. The store failing now
    is a warning: it must not hide the finished training."""
    skipped = list(datamodule.skipped)
    if skipped:
        logger.log_metrics({M.SKIPPED_FILES: float(len(skipped))}, step=step)
        log.warning(
            "skipped %d bad audio file(s); the list is the run's %s artifact", len(skipped), SKIPPED_FILES_ARTIFACT
        )
    if not logger.flush():
        logger.write_unsent()
    try:
        if skipped:
            client.log_text(logger.run_id, datamodule.skipped.report(), SKIPPED_FILES_ARTIFACT)
        metrics.update(log_run_summary(client, logger.run_id, step))
        if module.stop_reason:
            client.set_tag(logger.run_id, "mertlab.stopped", module.stop_reason)
            client.set_terminated(logger.run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 - the store failing now must not hide the finished training
        log.warning("MLflow tracking store %s: could not log the run summary (%s)", tracking_uri, exc)


def shortest_usable_seconds(module: PretrainModule) -> float:
    """Files shorter than one frame of the backbone or of a teacher are skipped as too short."""
    rates = [module.backbone.frame_rate, *(t.info.frame_rate for t in module.teachers.values())]
    return 1.0 / min(rates)
