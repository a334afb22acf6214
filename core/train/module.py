"""The pre-training LightningModule: assembled from a spec, it only talks to the contracts.

One step, top to bottom (``training_step``):

1. the target source gives each teacher's targets of the *clean* audio, aligned to the
   backbone's frames: the teachers run on the crops, or the crops' frames are read from the
   target cache (``data.target_cache``; see :mod:`mertlab.train.targets`);
2. mixup perturbs the *student* input only;
3. the masking picks frames to hide; the backbone sees them as the mask embedding;
4. each objective scores the backbone output against its teacher's targets;
   ``loss/total = sum(weight * loss) (+ feature penalty)``;
5. non-finite losses or gradients skip the step (counted in ``stability/*``, logged with their
   real non-finite values, never the last finite ones); see :meth:`PretrainModule.skip_update`.

Stability instrumentation beyond that (per-block gradient norms, attention logits, update
ratios, loss spikes) lives in the ``stability`` callback.
"""
from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mertlab import metric_names as M
from mertlab.augment import mixup
from mertlab.contracts import BackboneOutput, Targets
from mertlab.data.dataset import AudioBatch
from mertlab.seeding import derive_seed
from mertlab.spec import ExperimentSpec
from mertlab.train.schedule import lr_factor
from mertlab.train.targets import target_source


def code_perplexity(codes: Tensor, vocab_size: int) -> Tensor:
    """exp(entropy) of the code histogram: how many codes are effectively used."""
    counts = torch.bincount(codes.flatten(), minlength=vocab_size).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp()


class PretrainModule(L.LightningModule):
    """Backbone + teachers + weighted objectives + masking, built from a resolved spec."""

    def __init__(self, spec: ExperimentSpec, registry: Any = None) -> None:
        super().__init__()
        if registry is None:
            from mertlab.registry import get_registry

            registry = get_registry()
        self.spec = spec
        self.backbone = registry.build("backbone", spec.backbone.name, spec.backbone.params)
        self.teachers = nn.ModuleDict(
            {alias: registry.build("teacher", t.name, t.params) for alias, t in spec.teachers.items()}
        )
        for teacher in self.teachers.values():
            teacher.requires_grad_(False)
        # Teachers stay modules of the model either way (their info types the objectives; the
        # checkpoint layout does not depend on where targets come from).
        self.target_source = target_source(spec.data.target_cache, self.teachers, self.backbone.sample_rate)
        self.objectives = nn.ModuleDict({
            alias: registry.build(
                "objective", o.name, o.params,
                hidden_dim=self.backbone.hidden_dim,
                num_layers=self.backbone.num_layers,
                target_info=self.teachers[o.teacher].info,
            )
            for alias, o in spec.objectives.items()
        })
        self.masking = registry.build("masking", spec.masking.name, spec.masking.params)
        # Stability bookkeeping, saved in checkpoints so resumed runs keep counting.
        self.nonfinite_steps = 0
        self.skipped_steps = 0
        self.consecutive_nonfinite = 0
        self.stop_reason: str | None = None  # set when training stops itself (see on_train_batch_end)
        self.last_loss: float | None = None  # this step's finite loss/total (None: non-finite)
        self._step_nonfinite = False  # this step's loss or gradient was non-finite
        self._step_skipped = False  # this step's update was skipped (skip_update)
        self.instrument_next_step = False  # set by the stability callback
        self.last_output: BackboneOutput | None = None
        self._last_step_start: float | None = None

    # ------------------------------------------------------------------ plumbing
    def train(self, mode: bool = True) -> "PretrainModule":
        super().train(mode)
        self.teachers.eval()  # teachers are frozen feature extractors, never in train mode
        return self

    def configure_optimizers(self):
        optim = self.spec.optim
        params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teachers.")]
        cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
        max_steps = self.spec.trainer.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mertlab_spec"] = self.spec.model_dump(mode="json")
        checkpoint["mertlab_stability"] = {
            "nonfinite_steps": self.nonfinite_steps, "skipped_steps": self.skipped_steps,
            "consecutive_nonfinite": self.consecutive_nonfinite,
        }
        logger = self.logger
        if logger is not None and getattr(logger, "run_id", None):
            checkpoint["mlflow_run_id"] = logger.run_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("mertlab_stability", {})
        self.nonfinite_steps = counters.get("nonfinite_steps", 0)
        self.skipped_steps = counters.get("skipped_steps", 0)
        self.consecutive_nonfinite = counters.get("consecutive_nonfinite", 0)

    # ------------------------------------------------------------------ the step
    def frame_padding(self, wav: Tensor, lengths: Tensor) -> tuple[int, Tensor, Tensor]:
        """Frames per clip and the ``[B, T]`` padding mask for a batch."""
        num_frames = self.backbone.num_frames(wav.shape[1])
        frame_lengths = self.backbone.frame_lengths(lengths).clamp(max=num_frames)
        steps = torch.arange(num_frames, device=wav.device)
        return num_frames, frame_lengths, steps[None, :] >= frame_lengths[:, None]

    @torch.no_grad()
    def compute_targets(self, batch: AudioBatch, num_frames: int, frame_lengths: Tensor) -> dict[str, Targets]:
        """Each teacher's targets of the clean audio, aligned to the backbone's frames."""
        return self.target_source.targets(batch, self.backbone.frame_rate, num_frames, frame_lengths)

    def mask_generator(self, stage: str, batch_idx: int) -> torch.Generator:
        """Reproducible masks and mixup: seeded by (spec seed, stage, global step, micro-batch
        index, rank), so every micro-batch and device draws its own masks and a resumed run
        draws the same ones as the uninterrupted run."""
        step = self.global_step if stage == "train" else 0
        stage_id = 0 if stage == "train" else 1
        return torch.Generator().manual_seed(derive_seed(self.spec.seed, stage_id, step, batch_idx, self.global_rank))

    def on_train_batch_start(self, batch: AudioBatch, batch_idx: int) -> None:
        """Seed the global RNG (dropout) from the step's position, as :meth:`mask_generator` does."""
        torch.manual_seed(derive_seed(self.spec.seed, 2, self.global_step, batch_idx, self.global_rank))

    def shared_step(self, batch: AudioBatch, batch_idx: int, stage: str) -> tuple[Tensor, dict[str, Tensor], dict[str, Targets]]:
        wav, lengths = batch.wav, batch.lengths
        num_frames, frame_lengths, padding = self.frame_padding(wav, lengths)
        targets = self.compute_targets(batch, num_frames, frame_lengths)
        generator = self.mask_generator(stage, batch_idx)
        student = wav
        mix = self.spec.augment.mixup
        if stage == "train" and mix.probability > 0:
            student = mixup(wav, lengths, mix.probability, mix.max_gain, generator)
        mask = self.masking(padding.cpu(), generator).to(wav.device) & ~padding
        out = self.backbone(student, lengths, mask, instrument=stage == "train" and self.instrument_next_step)
        self.last_output = out if stage == "train" else None

        total = wav.new_zeros(())
        logs: dict[str, Tensor] = {}
        for alias, objective in self.objectives.items():
            spec = self.spec.objectives[alias]
            result = objective(out, targets[spec.teacher], mask)
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
        logs[M.LOSS_TOTAL] = total.detach()
        return total, logs, targets

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor | None:
        if len(batch) == 0:  # every file of the batch was bad (skipped and recorded by the data module)
            self._step_skipped = True
            self.last_loss = None
            nothing = {M.LOSS_TOTAL: float("nan"), M.GRAD_NORM_TOTAL: float("nan")}  # no value, not a stale one
            self.log_dict(nothing, on_step=True, on_epoch=False, batch_size=1)
            return None
        loss, logs, targets = self.shared_step(batch, batch_idx, "train")
        self.log_throughput(batch)
        logs.update(self.teacher_statistics(targets))  # cheap histograms; Lightning throttles logging
        logs[M.LR] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"])
        finite = bool(torch.isfinite(loss))
        self.last_loss = float(loss.detach()) if finite else None
        if not finite:
            self._step_nonfinite = True
            # No backward runs, so there is no gradient: its norm is logged as NaN at this step
            # (Lightning would otherwise re-log the last finite norm).
            logs[M.GRAD_NORM_TOTAL] = torch.tensor(float("nan"))
            loss = None  # Lightning skips backward; the optimizer sees no gradients (see skip_update)
        # Every value is logged as computed, non-finite ones included: a curve never shows a
        # stale finite value for a step that was skipped.
        total = logs.pop(M.LOSS_TOTAL)
        self.log(M.LOSS_TOTAL, total, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch))
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=len(batch))
        return loss

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
        self.log_dict({
            M.NONFINITE_STEPS: float(self.nonfinite_steps), M.SKIPPED_STEPS: float(self.skipped_steps),
        }, on_step=True, on_epoch=False, batch_size=max(len(batch), 1))
        limit = self.spec.trainer.max_consecutive_nonfinite
        if limit and self.consecutive_nonfinite >= limit:
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
        self.log_dict({M.val(k): v for k, v in logs.items()}, on_step=False, on_epoch=True, batch_size=len(batch))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure the global gradient norm (before clipping); skip non-finite gradients."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:  # a non-finite loss: no backward ran, there is nothing to update
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        self.log(M.GRAD_NORM_TOTAL, norm, on_step=True, on_epoch=False)  # logged as is, also when non-finite
        if not torch.isfinite(norm):
            self._step_nonfinite = True
            self.skip_update(optimizer)

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

    def log_throughput(self, batch: AudioBatch) -> None:
        """Audio seconds and clips per wall-clock second, measured step start to step start."""
        now = time.perf_counter()
        if self._last_step_start is not None:
            elapsed = max(now - self._last_step_start, 1e-9)
            seconds = float(batch.lengths.sum()) / self.backbone.sample_rate
            self.log_dict({
                M.AUDIO_SECONDS_PER_S: seconds / elapsed,
                M.SAMPLES_PER_S: len(batch) / elapsed,
            }, on_step=True, on_epoch=False)
        self._last_step_start = now
