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

from mertlab.data.datamodule import AudioDataModule
from mertlab.data.dataset import shortest_usable_seconds
from mertlab.data.prepare import prepare_data
from mertlab.errors import MertlabError
from mertlab.experiment import metric_names as M
from mertlab.experiment.run_summary import log_run_summary
from mertlab.experiment.spec import ExperimentSpec, global_batch_size
from mertlab.experiment.tracking import (
    LOCK_TAG,
    PROCESS_TAG,
    RUN_DIR_TAG,
    UNSENT_FILE,
    check_store,
    cluster_store_warning,
    ensure_experiment,
    handled_store_errors,
    log_spec,
    mark_crashed_runs,
    process_identity,
    resolve_tracking_uri,
    run_tags,
    store_errors,
    tag_failure,
)
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.target_cache import build_teacher_cache
from mertlab.toolkit.atomic import check_writable
from mertlab.toolkit.paths import inside
from mertlab.toolkit.run_lock import RunLock, acquire_run_lock
from mertlab.toolkit.timing import PhaseTimer
from mertlab.train.agreement import state_digest
from mertlab.train.checkpoint_io import (
    ResumePoint,
    SafeCheckpointIO,
    checkpoint_candidates,
    read_training_checkpoint,
    select_resume_checkpoint,
)
from mertlab.train.module import PretrainModule
from mertlab.train.profiling import ProfileSteps
from mertlab.train.startup import StartAgreement, StartState, Startup, join_startup
from mertlab.train.strategy import build_strategy
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
    timer: PhaseTimer = field(default_factory=PhaseTimer)  # seconds per phase (see ValidationTime)
    global_step: int = 0


def run_directory(spec: ExperimentSpec) -> Path:
    """``<trainer.output_dir>/<spec name>``; each MLflow run gets a sub-folder of checkpoints."""
    return inside(spec.trainer.output_dir, spec.name, what="name")


#: ``--resume auto``: continue the newest checkpoint of the spec when there is one, else start fresh.
RESUME_AUTO = "auto"


def find_resume_checkpoint(spec: ExperimentSpec, resume: str | bool) -> ResumePoint | None:
    """What ``resume`` continues: None for a fresh start (``False``, or ``"auto"`` while the spec
    has no checkpoint yet); an explicit checkpoint path; else (``True``, ``"auto"``) the newest
    checkpoint of this spec's runs that loads
    (:func:`~mertlab.train.checkpoint_io.select_resume_checkpoint`; a sharded (fsdp) checkpoint
    is a folder)."""
    if not resume:
        return None
    runs = run_directory(spec)
    if resume == RESUME_AUTO:
        return select_resume_checkpoint(runs) if checkpoint_candidates(runs) else None
    return select_resume_checkpoint(runs, resume if isinstance(resume, str) else None)


class ValidationTime(L.Callback):
    """Counts validation as its own phase of ``timer`` (training's clock pauses meanwhile)."""

    def __init__(self, timer: PhaseTimer) -> None:
        self.timer = timer

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.timer.start(M.PHASE_VALIDATION)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.timer.stop(M.PHASE_VALIDATION)


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
    startup: Startup | None = None,
    timer: PhaseTimer | None = None,
) -> TrainResult:
    """Train ``spec``; with ``resume`` continue a checkpoint and its MLflow run.

    ``resume``: ``True`` (the newest checkpoint of the spec), ``"auto"`` (the same, or a fresh
    start when there is none yet) or a checkpoint path. ``run_id`` logs into an MLflow run that
    already exists (a sweep child made by :mod:`mertlab.experiment.sweep`, which sets its tags);
    by default a new run is created. At the end the run's ``summary/*`` metrics are logged
    (:mod:`mertlab.experiment.run_summary`). ``profile_steps``: a torch.profiler trace of that
    many steps after warm-up, logged with a top-ops table (:mod:`mertlab.train.profiling`).
    ``timer``: where the phases' seconds go (data, set-up, target cache, training, validation;
    a new one by default), returned as ``TrainResult.timer`` for the caller to add its own
    phases (probes) and log (:func:`mertlab.experiment.phase_times.log_phase_times`).

    Distributed, rank 0 alone decides the run, the checkpoint and the data preparation, and the
    other ranks follow (:mod:`mertlab.train.startup`; ``startup``: the one a sweep child already
    joined). Rank 0 holds the run's lock (:mod:`mertlab.toolkit.run_lock`) while it trains.
    """
    if registry is None:
        registry = get_registry()
    quiet_lightning()
    L.seed_everything(spec.seed, workers=True, verbose=False)
    startup = startup or join_startup(spec.trainer)
    held: list[RunLock] = []  # rank 0: the run's lock, from the moment the run is known
    timer = timer or PhaseTimer()
    try:
        return _train(spec, resume, registry, progress, run_id, profile_steps, startup, held, timer)
    finally:
        for lock in held:
            lock.release()


def _train(
    spec: ExperimentSpec,
    resume: str | bool,
    registry: Any,
    progress: bool,
    run_id: str | None,
    profile_steps: int | None,
    startup: Startup,
    held: list[RunLock],
    timer: PhaseTimer,
) -> TrainResult:
    tracking_uri = resolve_tracking_uri(spec)
    experiment = spec.tracking.experiment or spec.name
    chosen: list[ResumePoint] = []  # rank 0: the checkpoint it read while choosing

    def choose_checkpoint() -> dict[str, Any]:
        point = find_resume_checkpoint(spec, resume)
        if point is None:
            return {"checkpoint": None, "run_id": run_id, "step": 0}
        chosen.append(point)
        ckpt_run = point.checkpoint.get("mlflow_run_id")
        if run_id and ckpt_run and ckpt_run != run_id:
            raise MertlabError(f"--resume: {point.path} belongs to MLflow run {ckpt_run}, not {run_id}")
        owner = ckpt_run or run_id
        if owner:  # a second process resuming this run refuses here, before touching it
            held.append(acquire_run_lock(run_folder(spec, owner)))
        return {
            "checkpoint": str(point.path),
            "run_id": owner,
            "step": point.checkpoint.get("global_step", 0),
        }

    start = startup.decide("checkpoint to resume", choose_checkpoint)
    client: list[Any] = []  # rank 0's MLflow client

    def prepare() -> None:  # one clear error, before any work
        with timer.phase(M.PHASE_SETUP):
            client.append(check_store(tracking_uri, spec.tracking.connect_timeout))
            if spec.trainer.num_nodes > 1:
                warning = cluster_store_warning(tracking_uri, f"this {spec.trainer.num_nodes}-node run")
                if warning:
                    log.warning(warning)
            check_writable(run_directory(spec), "trainer.output_dir")  # before any work or MLflow run
        with timer.phase(M.PHASE_DATA):
            prepare_data(spec, progress)

    startup.lead_only("data preparation", prepare)

    def build() -> tuple[PretrainModule, Any, AudioDataModule]:
        module = PretrainModule(spec, registry)
        strategy = build_strategy(spec.trainer, module.backbone)  # misconfigurations surface before MLflow
        datamodule = AudioDataModule(
            spec.data,
            module.backbone.sample_rate,
            spec.seed,
            min_seconds=shortest_usable_seconds(module.backbone, module.teachers.values()),
        )
        datamodule.setup()  # data errors surface before an MLflow run is created
        return module, strategy, datamodule

    with timer.phase(M.PHASE_SETUP):
        module, strategy, datamodule = startup.each("set-up", build)
    files = datamodule.train_files + datamodule.val_files
    with timer.phase(M.PHASE_TARGET_CACHE):
        cache_dir = spec.data.target_cache
        if cache_dir and spec.data.build_target_cache and files:
            startup.lead_only(
                "target cache",
                lambda: [
                    build_teacher_cache(
                        teacher,
                        files,
                        cache_dir,
                        alias=alias,
                        progress=progress,
                        skipped_files=datamodule.skipped,
                    )
                    for alias, teacher in module.teachers.items()
                ],
            )
        # files a build found unusable (e.g. NaN samples) are skipped and counted, like bad files at the scan
        datamodule.exclude(startup.each("target check", lambda: module.target_source.check_files(files)))

    checkpoint_io = SafeCheckpointIO()
    ckpt_path = Path(start["checkpoint"]) if start["checkpoint"] else None

    def load_checkpoint() -> str | None:
        """Every rank reads the checkpoint rank 0 chose; the digest of what it read."""
        if ckpt_path is None:
            return None
        if chosen:
            checkpoint = chosen[0].checkpoint
        else:
            try:
                checkpoint = read_training_checkpoint(ckpt_path, mmap=True)
            except MertlabError as exc:
                raise MertlabError(f"--resume: {exc}") from None
        if ckpt_path.is_file():  # a sharded folder is read by the fsdp strategy itself
            checkpoint_io.preload(ckpt_path, checkpoint)
        return state_digest(checkpoint)

    digest = startup.each("reading the checkpoint", load_checkpoint)
    logger_box: list[ResilientMLFlowLogger] = []

    def open_run() -> dict[str, Any]:
        """Rank 0: the MLflow run (created, or the resumed one marked RUNNING), locked and tagged."""
        (store,) = client
        with store_errors(tracking_uri):  # a store that takes reads but not writes: one line too
            ensure_experiment(store, experiment)  # artifacts beside the store, MLflow's training view
            for crashed in mark_crashed_runs(store, experiment):
                log.warning("MLflow run %s was left RUNNING by a training process that is gone: marked FAILED", crashed)
            known = start["run_id"]
            if known:
                store.update_run(known, status="RUNNING")
            logger = make_logger(spec, registry, tracking_uri, experiment, known)
            if known and ckpt_path is not None:
                logger.skip_logged_steps = logged_steps(store, known)
            logger_box.append(logger)
            new_run = logger.lead_run_id  # a new run is created on this first use
            if not held:  # a new run: nobody else can know it yet
                held.append(acquire_run_lock(run_folder(spec, new_run)))
            log_spec(logger, spec)
            if GLOBAL_BATCH_PARAM not in store.get_run(new_run).data.params:
                logger.log_hyperparams({GLOBAL_BATCH_PARAM: global_batch_size(spec)})
            store.set_tag(new_run, PROCESS_TAG, process_identity())
            store.set_tag(new_run, LOCK_TAG, str(held[0].path))
            store.set_tag(new_run, RUN_DIR_TAG, str(run_folder(spec, new_run).resolve()))
        return {"run_id": new_run}

    run_id = startup.decide("MLflow run", open_run)["run_id"]
    # On other ranks the logger is inert (Lightning logs from rank 0 only).
    logger = logger_box[0] if logger_box else make_logger(spec, registry, tracking_uri, experiment, run_id)
    checkpoint_dir = run_folder(spec, run_id) / "checkpoints"
    logger.unsent_file = checkpoint_dir.parent / UNSENT_FILE
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
    callbacks = [registry.build("callback", c.name, c.params) for c in spec.callbacks.values()]
    callbacks.append(ValidationTime(timer))
    if profile_steps:
        callbacks.append(ProfileSteps(profile_steps))
    agreement = StartAgreement(
        StartState(run_id, start["checkpoint"], int(start["step"]), digest), startup.group
    )  # before the first step: every rank starts the same run from the same state
    plugins: list[Any] = [checkpoint_io]
    if startup.launch.environment is not None:
        plugins.append(startup.launch.environment)  # the ranks Lightning sees are the ones start-up used
    try:
        try:
            trainer = make_trainer(
                spec, strategy, logger, [agreement, *callbacks, checkpoint], plugins, has_val, progress
            )
        except (ValueError, MisconfigurationException) as exc:  # e.g. more devices than the machine has
            raise MertlabError(f"trainer: {exc}") from None
        with timer.phase(M.PHASE_TRAINING), startup.handed_to_launched_ranks():
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except Exception as exc:
        if client:  # rank 0: the run's reason for failing, next to its FAILED status
            tag_failure(client[0], run_id, exc)
        raise
    if trainer.state.finished:  # max_steps may end mid-epoch: make last.ckpt the final state
        # Every rank calls it (FSDP gathers or writes shards); DDP writes on rank 0 only.
        with timer.phase(M.PHASE_TRAINING):
            trainer.save_checkpoint(checkpoint_dir / "last.ckpt", weights_only=False)
    skipped = gather_skipped(trainer, datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if trainer.is_global_zero:
        finish_run(logger, client[0], tracking_uri, module, datamodule, trainer.global_step, metrics)
    if module.stop_reason:
        raise MertlabError(f"{module.stop_reason}; checkpoint: {checkpoint_dir / 'last.ckpt'}")
    return TrainResult(
        run_id,
        experiment,
        tracking_uri,
        checkpoint_dir,
        metrics,
        skipped,
        trainer.is_global_zero,
        timer,
        trainer.global_step,
    )


def run_folder(spec: ExperimentSpec, run_id: str) -> Path:
    """The output folder of one MLflow run of ``spec``: its checkpoints, its lock."""
    return inside(run_directory(spec), run_id, what="MLflow run id")


def make_logger(
    spec: ExperimentSpec, registry: Any, tracking_uri: str, experiment: str, run_id: str | None
) -> ResilientMLFlowLogger:
    """The run's MLflow logger: of ``run_id``, or (rank 0, ``None``) of a new run with the spec's tags."""
    return ResilientMLFlowLogger(
        experiment_name=experiment,
        tracking_uri=tracking_uri,
        run_name=spec.tracking.run_name or spec.name,
        tags=None if run_id else run_tags(spec, registry),
        run_id=run_id,
        flush_timeout=spec.tracking.connect_timeout,
    )


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
        with handled_store_errors():
            run_id = logger.lead_run_id
            if skipped:
                client.log_text(run_id, datamodule.skipped.report(), SKIPPED_FILES_ARTIFACT)
            metrics.update(log_run_summary(client, run_id, step))
            if module.stop_reason:
                client.set_tag(run_id, "mertlab.stopped", module.stop_reason)
                client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 - the store failing now must not hide the finished training
        if module.stop_reason:
            logger.set_tag("mertlab.stopped", module.stop_reason)
            logger.write_unsent()
        where = logger.write_end("FAILED" if module.stop_reason else "FINISHED", summary_step=step)
        log.warning(
            "MLflow tracking store %s: could not log the run summary (%s: %s)%s",
            tracking_uri,
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
            f"; recorded in {where} for `mertlab tracking replay {where.parent}`" if where else "",
        )
