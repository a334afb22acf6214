"""The pre-training LightningModule: assembled from a spec, it only talks to the contracts.

One step, top to bottom (``training_step``):

1. the target source gives each teacher's targets of the *clean* audio, aligned to the
   backbone's frames: the teachers run on the crops, or the crops' frames are read from the
   target cache (``data.target_cache``; see :mod:`mertlab.train.targets`);
2. the spec's augmentations (``augment``: plugins, e.g. ``mixup``) perturb the *student* input only;
3. the masking picks frames to hide; the backbone sees them as the mask embedding;
4. each objective scores the backbone output against its teacher's targets;
   ``loss/total = sum(weight * loss) (+ feature penalty)``;
5. non-finite losses or gradients skip the step (counted in ``stability/*``, logged with their
   real non-finite values, never the last finite ones); see :meth:`PretrainModule.skip_update`;
   an update that leaves a parameter non-finite is undone and counted the same way
   (:meth:`PretrainModule.undo_nonfinite_update`).

Stability instrumentation beyond that (per-block gradient norms, attention logits, update
ratios, loss spikes) lives in the ``stability`` callback.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor, nn

from mertlab.contracts import BackboneOutput, Objective, ObjectiveOutput, Targets
from mertlab.data.dataset import AudioBatch
from mertlab.data.source import data_source
from mertlab.errors import ObjectiveError
from mertlab.experiment import metric_names as M
from mertlab.experiment.spec import ExperimentSpec
from mertlab.plugin_system.registry import get_registry
from mertlab.toolkit.backbone_output import check_backbone_output
from mertlab.toolkit.code_usage import code_perplexity
from mertlab.toolkit.objective_output import check_objective_output, objective_label
from mertlab.toolkit.seeding import AUGMENT, DROPOUT, LAYER_DROP, MASK, VAL_MASK, derive_seed, generator, name_key
from mertlab.train.agreement import any_rank
from mertlab.train.schedule import lr_factor
from mertlab.train.strategy import global_norms
from mertlab.train.targets import FrozenTeachers, target_source, without_legacy_teacher_weights
from mertlab.train.update_guard import UpdateGuard

log = logging.getLogger(__name__)
#: Checkpoint key of the teachers' fingerprints (:meth:`FrozenTeachers.fingerprints`).
TEACHERS_KEY = "mertlab_teachers"


def run_objective(
    alias: str, objective: Objective, out: BackboneOutput, targets: Targets, mask: Tensor
) -> ObjectiveOutput:
    """``objective``'s output for one step, checked at the boundary
    (:func:`~mertlab.toolkit.objective_output.check_objective_output`): a malformed output is
    one error naming ``objectives.<alias>``, the objective and its plugin; an exception raised
    inside the objective carries a note naming them too."""
    try:
        result = objective(out, targets, mask)
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"raised in {objective_label(objective, alias)}")
        raise
    return check_objective_output(objective, result, alias)


@dataclass(frozen=True)
class StepTotals:
    """A training step over all ranks (see :meth:`PretrainModule.step_totals`)."""

    loss: float  # mean loss/total of the ranks with clips (NaN: none had any)
    empty_ranks: int  # ranks whose batch had no clip (every file bad)
    audio_seconds: float
    clips: float


class PretrainModule(L.LightningModule):
    """Backbone + teachers + weighted objectives + masking, built from a resolved spec."""

    def __init__(self, spec: ExperimentSpec, registry: Any = None) -> None:
        super().__init__()
        if registry is None:
            registry = get_registry()
        self.spec = spec
        self.backbone = registry.build("backbone", spec.backbone.name, spec.backbone.params)
        # Outside the module tree (not submodules): no parallel wrapper, precision plugin or
        # checkpoint sees them; they run in float32 on the batch's device (see FrozenTeachers).
        self.teachers = FrozenTeachers(
            {alias: registry.build("teacher", t.name, t.params) for alias, t in spec.teachers.items()}
        )
        self.target_source = target_source(
            spec.data.target_cache, self.teachers, self.backbone.sample_rate, data_source(spec.data)
        )
        self.objectives = nn.ModuleDict(
            {
                alias: registry.build(
                    "objective",
                    o.name,
                    o.params,
                    hidden_dim=self.backbone.hidden_dim,
                    num_layers=self.backbone.num_layers,
                    target_info=self.teachers[o.teacher].info,
                )
                for alias, o in spec.objectives.items()
            }
        )
        self.masking = registry.build("masking", spec.masking.name, spec.masking.params)
        self.augmentations = {
            alias: registry.build("augmentation", a.name, a.params) for alias, a in spec.augment.items()
        }
        # Stability bookkeeping, saved in checkpoints so resumed runs keep counting.
        self.nonfinite_steps = 0
        self.skipped_steps = 0
        self.consecutive_nonfinite = 0
        self.nonfinite_updates = 0  # of them, updates undone for leaving a parameter non-finite
        self.stop_reason: str | None = None  # set when training stops itself (see on_train_batch_end)
        self.last_loss: float | None = None  # this step's finite loss/total (None: non-finite)
        self._step_nonfinite = False  # this step's loss or gradient was non-finite
        self._step_skipped = False  # this step's update was skipped (skip_update)
        self._update_blocked = False  # a micro-batch of this optimizer step was skipped
        self.instrument_next_step = False  # set by the stability callback
        self.update_guard = UpdateGuard() if spec.trainer.undo_nonfinite_updates else None
        self._warned_nonfinite_update = False
        self.last_output: BackboneOutput | None = None
        self._last_step_start: float | None = None

    # ------------------------------------------------------------------ plumbing
    def configure_optimizers(self):
        optim = self.spec.optim
        params = [p for p in self.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
        max_steps = self.spec.trainer.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mertlab_spec"] = self.spec.model_dump(mode="json")
        checkpoint["mertlab_stability"] = {
            "nonfinite_steps": self.nonfinite_steps,
            "skipped_steps": self.skipped_steps,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "nonfinite_updates": self.nonfinite_updates,
        }
        checkpoint[TEACHERS_KEY] = self.teachers.fingerprints()  # what rebuilds them; their weights are not saved
        logger = self.logger
        run_id = getattr(logger, "run_id", None)
        if run_id:
            checkpoint["mlflow_run_id"] = run_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("mertlab_stability", {})
        self.nonfinite_steps = counters.get("nonfinite_steps", 0)
        self.skipped_steps = counters.get("skipped_steps", 0)
        self.consecutive_nonfinite = counters.get("consecutive_nonfinite", 0)
        self.nonfinite_updates = counters.get("nonfinite_updates", 0)
        if isinstance(checkpoint.get("state_dict"), dict):  # older checkpoints also hold teacher weights
            checkpoint["state_dict"] = without_legacy_teacher_weights(checkpoint["state_dict"])
        changed = self.teachers.changed_since(checkpoint.get(TEACHERS_KEY))
        if changed:
            log.warning(
                "resuming with teachers other than the checkpoint's: %s; targets from here on are the new teachers'",
                "; ".join(changed),
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`; the teacher weights older checkpoints
        hold (``teachers.*``) are ignored: teachers are rebuilt from the spec."""
        return super().load_state_dict(without_legacy_teacher_weights(state_dict), strict=strict, assign=assign)

    # ------------------------------------------------------------------ the step
    def frame_padding(self, wav: Tensor, lengths: Tensor) -> tuple[int, Tensor, Tensor]:
        """Frames per clip and the ``[B, T]`` padding mask for a batch."""
        num_frames = self.backbone.num_frames(wav.shape[1])
        frame_lengths = self.backbone.frame_lengths(lengths).clamp(max=num_frames)
        steps = torch.arange(num_frames, device=wav.device)
        return num_frames, frame_lengths, steps[None, :] >= frame_lengths[:, None]

    @torch.no_grad()
    def compute_targets(self, batch: AudioBatch, num_frames: int, frame_lengths: Tensor) -> dict[str, Targets]:
        """Each teacher's targets of the clean audio, aligned to the backbone's frames (the
        teachers in float32 on the batch's device, autocast off)."""
        self.teachers.to(batch.wav.device)
        return self.target_source.targets(batch, self.backbone.frame_rate, num_frames, frame_lengths)

    def distributed_position(self) -> tuple[int, int, int]:
        """``(rank, world size, gradient-accumulation steps)``; ``(0, 1, 1)`` outside a Trainer."""
        trainer = self._trainer
        if trainer is None:
            return 0, 1, 1
        return trainer.global_rank, trainer.world_size, trainer.accumulate_grad_batches

    def micro_batch(self, batch_idx: int) -> int:
        """Index of the micro-batch within its optimizer step (0 without gradient accumulation)."""
        return batch_idx % self.distributed_position()[2]

    def frame_masks(self, padding: Tensor, stage: str, batch_idx: int) -> Tensor:
        """Masks of a batch, one random stream per clip.

        Training clip ``i`` on rank ``r`` draws from (seed, step, micro-batch, ``i * world + r``):
        masks differ across micro-batches of one step and across ranks, and ``i * world + r`` is
        the clip's position in the global batch under the interleaved
        :class:`~mertlab.data.sampler.ResumableBatchSampler` -- so N ranks draw exactly the masks
        one process would for the same global batch, and a resumed run the masks of the
        uninterrupted one. Validation clips use (seed, batch index, position): the same masks at
        every validation.
        """
        rank, world, _ = self.distributed_position()
        key: tuple[int, ...]
        if stage == "train":
            key = (MASK, self.global_step, self.micro_batch(batch_idx))
        else:
            key = (VAL_MASK, batch_idx)
        rows = [
            self.masking(padding[i : i + 1], generator(self.spec.seed, *key, i * world + rank))
            for i in range(padding.shape[0])
        ]
        return torch.cat(rows) if rows else padding.clone()

    def augmentation_generator(self, alias: str, batch_idx: int) -> torch.Generator:
        """An augmentation works on the local batch: seeded by (seed, step, micro-batch, rank,
        alias), so each rank and micro-batch draws its own, a resumed run what the uninterrupted
        one drew, and adding an augmentation leaves the others' draws as they were."""
        rank = self.distributed_position()[0]
        return generator(self.spec.seed, AUGMENT, self.global_step, self.micro_batch(batch_idx), rank, name_key(alias))

    def augment(self, wav: Tensor, lengths: Tensor, batch_idx: int) -> Tensor:
        """The student's input of a training step: the spec's augmentations, in order."""
        student = wav
        for alias, augmentation in self.augmentations.items():
            student = augmentation(student, lengths, self.augmentation_generator(alias, batch_idx))
        return student

    def layer_drop_seed(self, batch_idx: int) -> int:
        """Seed of the backbone's structural randomness (layer drop): (seed, step, micro-batch),
        deliberately *not* the rank, so every rank skips the same layers -- the global batch
        then sees one network, as it would in one process (see :meth:`Backbone.set_step_seed`)."""
        return derive_seed(self.spec.seed, LAYER_DROP, self.global_step, self.micro_batch(batch_idx))

    def on_train_batch_start(self, batch: AudioBatch, batch_idx: int) -> None:
        """Seed the global RNG (dropout) from the step's position: (seed, step, micro-batch, rank),
        so each rank drops its own units and a resumed run drops the uninterrupted run's."""
        rank = self.distributed_position()[0]
        torch.manual_seed(derive_seed(self.spec.seed, DROPOUT, self.global_step, self.micro_batch(batch_idx), rank))

    def shared_step(
        self, batch: AudioBatch, batch_idx: int, stage: str
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Targets]]:
        wav, lengths = batch.wav, batch.lengths
        num_frames, frame_lengths, padding = self.frame_padding(wav, lengths)
        targets = self.compute_targets(batch, num_frames, frame_lengths)
        student = self.augment(wav, lengths, batch_idx) if stage == "train" else wav
        if stage == "train":
            self.backbone.set_step_seed(self.layer_drop_seed(batch_idx))
        mask = self.frame_masks(padding.cpu(), stage, batch_idx).to(wav.device) & ~padding
        out = check_backbone_output(
            self.backbone,
            self.backbone(student, lengths, mask, instrument=stage == "train" and self.instrument_next_step),
            len(wav),
            num_frames,
        )
        self.last_output = out if stage == "train" else None

        total = wav.new_zeros(())
        logs: dict[str, Tensor] = {}
        no_graph: list[str] = []
        for alias, objective in self.objectives.items():
            spec = self.spec.objectives[alias]
            result = run_objective(alias, cast(Objective, objective), out, targets[spec.teacher], mask)
            if not result.loss.requires_grad:
                no_graph.append(objective_label(cast(Objective, objective), alias))
            weighted = spec.weight * result.loss
            total = total + weighted
            logs[M.loss(alias)] = result.loss.detach()
            logs[M.weighted_loss(alias)] = weighted.detach()
            for key, value in result.metrics.items():
                logs[M.objective_metric(alias, key)] = value.detach()
        if self.spec.feature_penalty > 0 and out.extractor_features is not None:
            penalty = out.extractor_features.float().pow(2).mean()
            total = total + self.spec.feature_penalty * penalty
            logs[M.FEATURE_PENALTY] = penalty.detach()
        if stage == "train" and torch.is_grad_enabled() and not total.requires_grad:
            raise ObjectiveError(
                f"loss/total has no gradient: {'; '.join(no_graph)} returned a loss not connected to the model "
                f"(no grad_fn) -- do not .detach() or .item() a loss, or compute it under torch.no_grad()"
            )
        logs[M.LOSS_TOTAL] = total.detach()
        return total, logs, targets

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor | None:
        if len(batch) == 0:  # every file of the batch was bad (skipped and recorded by the data module)
            loss, logs = None, dict[str, Tensor]()
        else:
            loss, logs, targets = self.shared_step(batch, batch_idx, "train")
            logs.update(self.teacher_statistics(targets))  # cheap histograms; Lightning throttles logging
            logs.pop(M.LOSS_TOTAL)
        totals = self.step_totals(loss, batch)
        self.log_throughput(totals)
        logs[M.LR] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"])
        # Every rank takes the same decision (the totals are global): a rank skipping backward
        # alone would leave the others waiting in DDP's gradient all-reduce.
        if totals.empty_ranks or not math.isfinite(totals.loss):
            if totals.empty_ranks:  # a batch without clips: nothing to learn from, not a bad step
                self._step_skipped = True
            else:
                self._step_nonfinite = True
            # No backward runs, so there is no gradient: its norm is logged as NaN at this step
            # (Lightning would otherwise re-log the last finite norm).
            logs[M.GRAD_NORM_TOTAL] = torch.tensor(float("nan"))
            loss = self.skipped_step_loss(loss, batch_idx)
            self._update_blocked = True  # no update, whatever backward gives (on_before_optimizer_step)
        self.last_loss = None if self._update_blocked else totals.loss
        # Every value is logged as computed, non-finite ones included: a curve never shows a
        # stale finite value for a step that was skipped. loss/total is the global batch's.
        size = max(len(batch), 1)
        self.log(M.LOSS_TOTAL, torch.tensor(totals.loss), prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def skipped_step_loss(self, loss: Tensor | None, batch_idx: int) -> Tensor | None:
        """What a skipped step returns. In one process None: Lightning skips backward and the
        optimizer sees no gradients. Distributed, Lightning needs a loss from every rank (DDP
        and FSDP reduce gradients in backward): the loss times zero, or where this rank had no
        clip a zero-weighted forward of silence through the backbone; the gradients that
        backward gives (zero or non-finite) are dropped before the optimizer step."""
        if self.distributed_position()[1] == 1:
            return None
        if loss is None:
            self.backbone.set_step_seed(self.layer_drop_seed(batch_idx))
            silence = torch.zeros(
                1, max(1, round(self.spec.data.crop_seconds * self.backbone.sample_rate)), device=self.device
            )
            loss = self.backbone(silence).last_hidden_state.float().sum()
        return loss * 0.0

    def step_totals(self, loss: Tensor | None, batch: AudioBatch) -> StepTotals:
        """This step's loss and amount of audio over all ranks: one all-reduce when distributed.

        ``loss`` is the mean of the ranks' losses (each the mean over its own clips' masked
        frames), non-finite when any rank's is, NaN when no rank has a clip. In one process it
        is the local loss.
        """
        local = [
            0.0 if loss is None else float(loss.detach()),
            0.0 if loss is None else 1.0,
            float(batch.lengths.sum()) / self.backbone.sample_rate if len(batch) else 0.0,
            float(len(batch)),
        ]
        world = self.distributed_position()[1]
        if world > 1:
            local = self.trainer.strategy.reduce(torch.tensor(local, device=self.device), reduce_op="sum").tolist()
        total, ranks, seconds, clips = local
        return StepTotals(total / ranks if ranks else float("nan"), world - round(ranks), seconds, clips)

    def skip_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Make this step's optimizer update a no-op and count it in ``stability/skipped_steps``.

        The gradients are dropped (``None``), so Adam/AdamW leave the parameters *and* their
        state (moments, per-parameter step counts, weight decay) untouched. The step still
        counts: the global step and the learning-rate schedule advance as usual, so a run with
        skipped steps ends at ``trainer.max_steps`` on the same schedule. Callbacks (e.g. the
        stability monitor's loss-spike ``skip`` action) may call it from
        ``on_before_optimizer_step``.
        """
        optimizer.zero_grad(set_to_none=True)
        self._step_skipped = True

    def on_train_batch_end(self, outputs: Any, batch: AudioBatch, batch_idx: int) -> None:
        """Log the step's counters; stop after ``trainer.max_consecutive_nonfinite`` bad steps."""
        if self._step_nonfinite:
            self.nonfinite_steps += 1
            self.consecutive_nonfinite += 1
        else:
            self.consecutive_nonfinite = 0
        if self._step_nonfinite or self._step_skipped:
            self.skipped_steps += 1
        self._step_nonfinite = self._step_skipped = False
        self.log_dict(
            {
                M.NONFINITE_STEPS: float(self.nonfinite_steps),
                M.SKIPPED_STEPS: float(self.skipped_steps),
                M.NONFINITE_UPDATES: float(self.nonfinite_updates),
            },
            on_step=True,
            on_epoch=False,
            batch_size=max(len(batch), 1),
        )
        limit = self.spec.trainer.max_consecutive_nonfinite
        # Every rank stops at the same step (a rank stopping alone would leave the others waiting).
        if limit and any_rank(self._trainer, self.consecutive_nonfinite >= limit):
            self.stop_reason = (
                f"training stopped at step {self.global_step}: {self.consecutive_nonfinite} consecutive non-finite "
                f"steps (trainer.max_consecutive_nonfinite: {limit}); the checkpoint holds the last finite state "
                "(skipped steps change nothing) and --resume continues it on the same schedule; to change the "
                "schedule, lower optim.lr or raise optim.warmup_steps and train again"
            )
            self.trainer.should_stop = True

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> None:
        if len(batch) == 0:
            return
        _, logs, _ = self.shared_step(batch, batch_idx, "val")
        # Averaged over ranks at the end of validation, so every rank's checkpoint callback sees
        # the same (global) val/loss/total when it picks the best checkpoint.
        self.log_dict(
            {M.val(k): v for k, v in logs.items()}, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True
        )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the global gradient norm; under FSDP through the sharded module's own
        ``clip_grad_norm_`` (the norm over every rank's shard), which Lightning's FSDP precision
        plugin leaves to the module."""
        model = self.trainer.model
        clip_grad_norm = getattr(model, "clip_grad_norm_", None)  # FSDP's sharded module
        if gradient_clip_val and clip_grad_norm is not None:
            clip_grad_norm(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure the global gradient norm (before clipping); skip non-finite gradients.

        A step one of whose micro-batches was skipped (non-finite loss, no clips) makes no
        update at all: under DDP that micro-batch's backward -- the one that all-reduces the
        accumulated gradients -- may be the one that did not run, so the ranks' gradients could
        differ; dropping them keeps every rank's weights the same.
        """
        if self._update_blocked:
            self._update_blocked = False
            optimizer.zero_grad(set_to_none=True)  # counted when its micro-batch was skipped
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = global_norms(self.trainer, {"total": grads}).get("total")
        if norm is None:  # a non-finite loss: no backward ran, there is nothing to update
            return
        self.log(M.GRAD_NORM_TOTAL, norm, on_step=True, on_epoch=False)  # logged as is, also when non-finite
        if not torch.isfinite(norm):
            self._step_nonfinite = True
            self.skip_update(optimizer)
        elif self.update_guard is not None:
            self.update_guard.snapshot(optimizer)  # an update will run: keep what it changes

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.undo_nonfinite_update(getattr(optimizer, "optimizer", optimizer))

    def undo_nonfinite_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Undo this step's update when it left a parameter NaN or infinite (finite loss and
        gradients do not make a finite update: see :mod:`mertlab.train.update_guard`). The
        parameters and optimizer state are put back as they were before the step, and the step
        is counted as a skipped non-finite step (``stability/nonfinite_steps``,
        ``stability/skipped_steps``; ``trainer.max_consecutive_nonfinite`` applies) and in
        ``stability/nonfinite_updates``; the first one of a run is named in a warning."""
        if self.update_guard is None:
            return
        bad = self.update_guard.undo_if_nonfinite(optimizer, agree=self._on_any_rank)
        if bad is None:
            return
        self._step_nonfinite = True
        self.nonfinite_updates += 1
        if not self._warned_nonfinite_update:
            self._warned_nonfinite_update = True
            names = {id(p): n for n, p in self.named_parameters()}
            which = f"parameter {names.get(id(self.update_guard.parameter(bad)), bad)}" if bad >= 0 else "a parameter"
            log.warning(
                "step %d: the optimizer update made %s non-finite (learning rate %g); the update is undone and the "
                "step counted as skipped (stability/skipped_steps); lower optim.lr or raise optim.warmup_steps",
                self.global_step,
                which,
                optimizer.param_groups[0]["lr"],
            )

    def _on_any_rank(self, flag: bool) -> bool:
        """``flag`` or-ed over the ranks (one all-reduce when distributed)."""
        if self.distributed_position()[1] == 1:
            return flag
        total = self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum")
        return bool(total > 0)

    # ------------------------------------------------------------------ metrics
    def teacher_statistics(self, targets: dict[str, Targets]) -> dict[str, Tensor]:
        """Codebook usage (perplexity) of each discrete teacher's targets on valid frames."""
        logs = {}
        for alias, t in targets.items():
            if t.info.kind != "discrete":
                continue
            valid = ~t.padding_mask
            for cb, vocab in enumerate(t.info.vocab_sizes):
                logs[M.code_perplexity(alias, cb)] = code_perplexity(t.values[..., cb][valid], vocab)
        return logs

    def log_throughput(self, totals: StepTotals) -> None:
        """Audio seconds and clips per wall-clock second of the global batch (all ranks),
        measured step start to step start."""
        now = time.perf_counter()
        if self._last_step_start is not None:
            elapsed = max(now - self._last_step_start, 1e-9)
            self.log_dict(
                {
                    M.AUDIO_SECONDS_PER_S: totals.audio_seconds / elapsed,
                    M.SAMPLES_PER_S: totals.clips / elapsed,
                },
                on_step=True,
                on_epoch=False,
            )
        self._last_step_start = now
